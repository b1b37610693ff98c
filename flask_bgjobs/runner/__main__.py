"""Entry point of an auto-started runner: ``python -m flask_bgjobs.runner``."""

from __future__ import annotations

import os
import sys
import traceback

from flask_bgjobs import joblog, launcher


def main() -> int:
    """Load the app named by ``BGJOBS_APP`` and serve until idle; return the exit code."""
    from flask.cli import ScriptInfo

    # Everything the runner needs is imported before the app, whose import puts the app's
    # folder on sys.path: nothing there can stand in for a module loaded by then.
    from flask_bgjobs.runner.loop import Runner
    from flask_bgjobs.state import get_state

    lock_fd_text = os.environ.pop(launcher.LOCK_FD_ENV, None)
    lock_fd = int(lock_fd_text) if lock_fd_text and lock_fd_text.isdigit() else None
    try:
        app = ScriptInfo(app_import_path=os.environ.get("BGJOBS_APP") or None).load_app()
        state = get_state(app)
    except Exception:  # noqa: BLE001 - nobody watches our stderr: say it in the error log
        _report_crash(f"could not load the app (BGJOBS_APP={os.environ.get('BGJOBS_APP')})")
        return 1
    try:
        with app.app_context():
            runner = Runner.for_app(app, state, autostarted=True, lock_fd=lock_fd)
            return runner.run(app)
    except Exception:  # noqa: BLE001
        state.joblog.write_error("Runner crashed.", traceback.format_exc())
        return 1


def _report_crash(message: str) -> None:
    path = (
        os.environ.get(launcher.ERROR_LOG_ENV)
        or os.environ.get("BGJOBS_ERROR_LOG_FILE")
        or os.environ.get("ERROR_LOG")
    )
    text = f"{joblog.timestamp()} ERROR: Runner {message}\n{traceback.format_exc()}"
    if path:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, text.encode("utf-8", "replace"))
            finally:
                os.close(fd)
            return
        except OSError:
            pass
    sys.stderr.write(text)


if __name__ == "__main__":
    sys.exit(main())
