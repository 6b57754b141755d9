"""Files and objects (``files:`` entries: S3 prefixes, local directories, tarballs).

Backups with a manifest (:mod:`tasks.files.backup`), their verification and the red twin's
bad object (:mod:`tasks.files.verify`), restores to a point in time or from a backup
(:mod:`tasks.files.restore`), and the rows-to-objects check (:mod:`tasks.files.links`).
S3 goes through the storage package's client (:mod:`tasks.files.client`).
"""
