"""AWS APIs other than S3: Route 53, EC2 security groups and snapshots, IAM keys, secrets.

Clients and error classification live in :mod:`tasks.aws.client`; each other module acts on
one service. Mutating steps read first, change only what differs, and return a
:class:`dr.changes.Change` recording the state before, so :func:`tasks.aws.undo.undo_change`
(or the ``restore_*`` functions) can put it back.
"""
