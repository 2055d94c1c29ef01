import pytest

from bcc_lightning.utils.errors import UserError
from bcc_lightning.utils.progress import wants_progress


def test_progress_setting_is_auto_true_or_false(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert wants_progress("auto") is True
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert wants_progress("auto") is False
    assert wants_progress(True) is True and wants_progress("true") is True
    assert wants_progress(False) is False and wants_progress("False") is False
    with pytest.raises(UserError, match="progress=auto"):
        wants_progress("maybe")
