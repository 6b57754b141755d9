"""Where rotated credentials are kept: Prefect Secret blocks and secret files.

A breach response rotates a credential in the system that checks it (a database role, IAM)
and then writes the new value where the application reads it. Secrets Manager and
Kubernetes secrets are written by :mod:`tasks.aws` and :mod:`tasks.kubernetes`; this
package writes the two other kinds of store: Prefect Secret blocks
(:mod:`tasks.secrets.prefect_blocks`, what ``dr.yaml``'s ``prefect_secret`` references name)
and files holding only the value (:mod:`tasks.secrets.files`: Docker secrets, mounted
files, the lab's ``secrets/`` folder).

Values are never logged, never put in a Change and are registered for redaction as soon as
they are read or written. The previous value is not kept: a breach never rolls a
credential back to a value believed leaked, so these writes are not compensable.
"""
