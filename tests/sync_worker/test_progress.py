import io

from sync_worker.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_nothing_reaches_a_non_terminal():
    stream = io.StringIO()
    progress = Progress(stream)
    progress.start_pass(2)
    assert list(progress.track([b"ab", b"cd"], "a1", 4)) == [b"ab", b"cd"]
    progress.item_done()
    progress.finish()
    assert stream.getvalue() == ""


def test_terminal_shows_the_pass_and_the_download():
    stream = Terminal()
    progress = Progress(stream)
    progress.start_pass(2)
    list(progress.track([b"x" * 512, b"x" * 512], "a1", 1024))
    progress.item_done()
    progress.finish()
    text = stream.getvalue()
    assert "archives 0/2" in text and "archives 1/2" in text
    assert "100%" in text and "a1" in text
