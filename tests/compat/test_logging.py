"""setup_logging as 0.0.7 documented it: the user's own loggers show on the shared console."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeloom import console, setup_logging
from tests.compat._compat_support import run_script


def test_user_loggers_show_at_the_chosen_level_and_markup_is_text(tmp_path: Path) -> None:
    proc = run_script(
        """
        import logging
        from pipeloom.rlog import console, setup_logging

        log = logging.getLogger("my_flow")
        setup_logging(0)
        log.info("hidden at verbose 0")
        log.warning("warning at verbose 0")
        setup_logging(1)
        setup_logging(1)  # a second call replaces, it does not double every line
        log.info("user line [red]not markup[/red]")
        log.debug("hidden at verbose 1")
        logging.getLogger("pipeloom").info("pipeloom line")
        setup_logging(2)
        log.debug("debug at verbose 2")
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "hidden" not in out
    assert "warning at verbose 0" in out
    assert out.count("user line [red]not markup[/red]") == 1
    assert out.count("pipeloom line") == 1
    assert "debug at verbose 2" in out


def test_levels_of_root_and_pipeloom_logger(tmp_path: Path) -> None:
    root = logging.getLogger()
    for verbose, level in ((0, logging.WARNING), (1, logging.INFO), (2, logging.DEBUG)):
        returned = setup_logging(verbose)
        assert returned is logging.getLogger("pipeloom")
        assert root.level == level
        assert returned.level == level
        ours = [h for h in root.handlers if getattr(h, "_pipeloom", False)]
        assert len(ours) == 1
        assert getattr(ours[0], "console", None) is console


def test_log_file_gets_user_and_pipeloom_lines(tmp_path: Path) -> None:
    log_file = tmp_path / "run.log"
    setup_logging(1, log_file)
    logging.getLogger("my_flow").info("from the user")
    logging.getLogger("pipeloom.writer").info("from pipeloom")
    text = log_file.read_text()
    assert "INFO my_flow" in text and "from the user" in text
    assert "INFO pipeloom.writer" in text and "from pipeloom" in text
