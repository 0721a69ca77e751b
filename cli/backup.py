"""`stagechat backup OUT` and `stagechat restore IN`: the store's database to one file and back.

SQLite: the online backup API (safe while the server writes); PostgreSQL: `pg_dump` / `pg_restore`
(`server/store/backup.py` knows how). A restore over a database that holds rows is refused without
`--force`; a missing file, an unreachable database or a refused restore is one line naming it on
stderr, exit 2.
"""

from __future__ import annotations

import argparse

from cli.common import fail


def add_parser(sub) -> None:
    b = sub.add_parser("backup", help="copy the store's database to one file (safe while serving)")
    b.add_argument("out", metavar="OUT", help="the backup file to write (replaced atomically)")
    b.add_argument("--database-url", default=None, help="default: STAGECHAT_DATABASE_URL or data/stagechat.db")
    b.set_defaults(func=run_backup)
    r = sub.add_parser("restore", help="replace the store's database with a backup (stop the server first)")
    r.add_argument("src", metavar="IN", help="a file `stagechat backup` wrote")
    r.add_argument("--force", action="store_true", help="replace a database that holds rows")
    r.add_argument("--database-url", default=None, help="default: STAGECHAT_DATABASE_URL or data/stagechat.db")
    r.set_defaults(func=run_restore)


def _url(args: argparse.Namespace) -> str:
    from server.settings import Settings

    return Settings.from_env(database_url=args.database_url).resolved_database_url


def run_backup(args: argparse.Namespace) -> int:
    from server.store.backup import BackupError, backup

    try:
        done = backup(_url(args), args.out)
    except BackupError as exc:
        return fail("backup", exc)
    except OSError as exc:  # a full disk, a read-only folder: name the path
        return fail("backup", f"cannot write {exc.filename or args.out}: {exc.strerror or exc}")
    print(done.describe("backed up"))
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from server.store.backup import BackupError, restore

    try:
        done = restore(_url(args), args.src, force=args.force)
    except BackupError as exc:
        return fail("restore", exc)
    except OSError as exc:
        return fail("restore", f"cannot restore {exc.filename or args.src}: {exc.strerror or exc}")
    print(done.describe("restored"))
    return 0
