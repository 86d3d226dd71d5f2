"""Progress output: bars on a terminal, periodic whole log lines (no '\\r' frames) otherwise."""

from __future__ import annotations

import io
import logging

import lightning as L
import torch

from wsss import progress


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_mode_follows_the_stream_and_the_override(monkeypatch) -> None:
    monkeypatch.delenv("WSSS_PROGRESS", raising=False)
    assert progress.mode(_Stream(tty=True)) == "bar"
    assert progress.mode(_Stream(tty=False)) == "lines"
    monkeypatch.setenv("WSSS_PROGRESS", "off")
    assert progress.mode(_Stream(tty=True)) == "off"


def test_non_tty_gets_plain_lines_not_frames(monkeypatch, caplog) -> None:
    monkeypatch.delenv("WSSS_PROGRESS", raising=False)
    monkeypatch.setenv("WSSS_PROGRESS_INTERVAL", "0")
    stream = _Stream(tty=False)
    with caplog.at_level(logging.INFO, logger="wsss.progress"):
        assert sum(progress.tqdm(range(5), desc="eval_seg", file=stream)) == 10
    assert stream.getvalue() == ""  # nothing written to the redirected stream itself
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-1].startswith("eval_seg: 5/5 (100%)") and lines[-1].endswith("done")
    assert all("\r" not in line for line in lines) and len(lines) >= 2


def test_tty_keeps_the_bar(monkeypatch) -> None:
    monkeypatch.delenv("WSSS_PROGRESS", raising=False)
    stream = _Stream(tty=True)
    list(progress.tqdm(range(3), desc="x", file=stream, mininterval=0))
    assert "\r" in stream.getvalue() and "3/3" in stream.getvalue()


def test_trainer_kwargs_switch_lightning_to_epoch_lines(monkeypatch, caplog) -> None:
    monkeypatch.setenv("WSSS_PROGRESS", "lines")
    kwargs = progress.trainer_kwargs({"max_epochs": 2, "callbacks": []})
    assert kwargs["enable_progress_bar"] is False
    assert [type(c) for c in kwargs["callbacks"]] == [progress.PlainProgress]
    assert progress.trainer_kwargs({"enable_progress_bar": True}) == {"enable_progress_bar": True}
    monkeypatch.setenv("WSSS_PROGRESS", "bar")
    assert "enable_progress_bar" not in progress.trainer_kwargs({})

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch, batch_idx):
            loss = (self.w * batch[0]).pow(2).mean()
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)
    with caplog.at_level(logging.INFO, logger="wsss.progress"):
        L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False,
                  **kwargs).fit(Tiny(), data)
    lines = [r.getMessage() for r in caplog.records if r.name == "wsss.progress"]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "train/loss" in lines[0]


def test_off_is_silent(monkeypatch, caplog) -> None:
    monkeypatch.setenv("WSSS_PROGRESS", "off")
    monkeypatch.setenv("WSSS_PROGRESS_INTERVAL", "0")
    with caplog.at_level(logging.INFO, logger="wsss.progress"):
        list(progress.tqdm(range(3), desc="quiet"))
    assert not caplog.records
