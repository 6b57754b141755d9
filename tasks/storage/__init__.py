"""Compatibility facade (removed when the layout lands): the old ``tasks.storage`` names.

New code imports :mod:`tasks.storage.client` (interface, factory, S3 client), the backends
:mod:`tasks.storage.file` / :mod:`tasks.storage.s3`, or :mod:`tasks.storage.operations`.
"""

from tasks.storage.client import (  # noqa: F401
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MULTIPART_THRESHOLD_BYTES,
    DEFAULT_PART_SIZE_BYTES,
    DEFAULT_RESUME_MIN_BYTES,
    ObjectInfo,
    PutResult,
    Repository,
    make_s3_client,
    open_repository,
)
from tasks.storage.file import FileRepository  # noqa: F401
from tasks.storage.operations import (  # noqa: F401
    copy_to_local_dir,
    copy_to_local_dir_task,
    delete_object,
    delete_object_task,
    delete_prefix,
    delete_prefix_task,
    get_to_file,
    get_to_file_task,
    glob_objects,
    glob_objects_task,
    list_objects,
    list_objects_task,
    put_bytes,
    put_bytes_task,
    put_file,
    put_file_task,
    read_object,
    read_object_task,
)
from tasks.storage.s3 import (  # noqa: F401
    S3_DELETE_MAX_KEYS,
    S3_MAX_PART_SIZE_BYTES,
    S3_MAX_PARTS,
    S3_MIN_PART_SIZE_BYTES,
    S3Repository,
)
