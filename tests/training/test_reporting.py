import io

from rich.console import Console

from dltrain.training.reporting import PlainReporter, RichReporter, format_row

ROW = {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.75, "val_loss": 0.625, "val_accuracy": None,
       "lr": 0.1, "seconds": 1.25}


def test_format_row_skips_missing_metrics():
    assert format_row(ROW, 10) == "epoch  2/10  loss 0.5000  acc 0.7500  val_loss 0.6250  lr 0.1  1.2s"


def test_plain_reporter_writes_one_line_per_epoch():
    out = io.StringIO()
    reporter = PlainReporter(out)
    reporter.start(10, 5)
    reporter.batch(2, 1, 0.5, 100.0)
    reporter.epoch_end(ROW, is_best=True)
    assert out.getvalue() == format_row(ROW, 10) + "  *\n"


def test_rich_reporter_on_a_terminal_draws_the_bar_and_the_epoch_lines():
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, force_terminal=True, width=120))
    reporter.start(3, 4)
    for epoch in (1, 2):
        for step in range(1, 5):
            reporter.batch(epoch, step, 0.5, 1000.0)
        reporter.epoch_end({**ROW, "epoch": epoch}, is_best=epoch == 1)
    reporter.close()
    text = out.getvalue()
    assert "epoch 1/3  loss 0.5000" in text and "epoch 2/3  loss 0.5000" in text
    assert "samples/s" in text and "*best" in text
