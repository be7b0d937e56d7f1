"""Labelling and boundary searches show a progress bar with the queries sent per second and what
remains of the query budget (:class:`tfkd.teacher.account.QueryProgress`), over the real gRPC
server; what the bar shows is read from the console Keras prints it to."""

import re

from tfkd import teacher
from tfkd.methods.db3kd import boundary


def _last(out: str, name: str) -> float:
    values = re.findall(rf"{re.escape(name)}: ([0-9.]+)", out)
    assert values, out[-2000:]
    return float(values[-1])


def test_labelling_shows_images_per_second_and_the_budget_left(server, fashion, tmp_path, capsys):
    account = teacher.QueryAccount(str(tmp_path), budget=5000)
    with teacher.connect(server.target, account=account, query_budget=5000) as t:
        t.soft_labels(fashion.x_test[:3000], progress=True, stage="label")
    out = capsys.readouterr().out
    assert "3000/3000" in out
    assert _last(out, "budget left") == 2000  # 5,000 - 3,000 images sent.
    assert _last(out, "images/s") > 0


def test_without_a_budget_the_bar_shows_the_rate_only(server, fashion, tmp_path, capsys):
    with teacher.connect(server.target, account=teacher.QueryAccount(str(tmp_path))) as t:
        t.soft_labels(fashion.x_test[:500], progress=True)
        t.soft_labels(fashion.x_test[:500], progress=False)
    out = capsys.readouterr().out
    assert out.count("500/500") == 1 and "budget left" not in out
    assert _last(out, "images/s") > 0


def test_a_boundary_search_shows_pairs_with_the_budget_left(server, fashion, tmp_path, capsys):
    account = teacher.QueryAccount(str(tmp_path), budget=100_000)
    with teacher.connect(server.target, account=account, query_budget=100_000) as t:
        images, pool = fashion.x_test[:4], fashion.x_test[100:140]
        labels, pool_labels = t.top1(images), t.top1(pool)
        before = account.total
        boundary.boundary_distances(
            images, labels, pool, pool_labels, 10, t.top1,
            boundary.BoundaryConfig(num_directions=2, chunk_pairs=8), progress=t.progress_bar)
        sent = account.total - before
    out = capsys.readouterr().out
    pairs = len(images) * 9  # Each image toward each of the 9 other classes.
    assert f"{pairs}/{pairs}" in out and "pair" in out
    assert sent > 0 and _last(out, "budget left") == 100_000 - account.total
