"""Compatibility facade (removed when the layout lands): the old ``tasks.notify`` names.

New code imports :mod:`tasks.notify.client` (the Slack client), :mod:`tasks.notify.messages`
(post, reply, update and their tasks), :mod:`tasks.notify.blocks` (Block Kit builders) and
:mod:`tasks.notify.thread` (the incident thread).
"""

from tasks.notify.blocks import (  # noqa: F401
    FIELD_TEXT_LIMIT,
    HEADER_TEXT_LIMIT,
    SECTION_TEXT_LIMIT,
    final_blocks,
    incident_opening_blocks,
    phase_reply_blocks,
    status_word,
)
from tasks.notify.client import make_client  # noqa: F401
from tasks.notify.messages import (  # noqa: F401
    PostedMessage,
    check_token,
    post_message,
    post_message_task,
    reply_in_thread,
    reply_in_thread_task,
    send_message,
    update_message,
    update_message_task,
)
from tasks.notify.thread import NullThread, SlackThread, slack_thread_for  # noqa: F401
