"""The toy report's "Causal localisation" section (activation patching, logit lens, generic
components) and :func:`mechtrunc.analysis.viz.patching_heatmap`.

The numbers are read back from the written page (the plotly figures' JSON and the tables) and
compared with direct library calls on the same model and prompts, and with the command lines the
section names; the page is opened in headless Chromium with the network blocked (marker
``browser``)."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("single_thread")

SCAN_KEYS = ["direction", "site", "layer", "head", "position"]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    """The same tiny toy run as tests/test_report.py's (trained 40 steps)."""
    from mechtrunc.models.toy_training import preset, train

    out = tmp_path_factory.mktemp("toy") / "run"
    cfg = preset("cpu", d_model=16, seq_len=32, steps=40, eval_every=20, batch_size=16, test_size=32, seed=0)
    train(cfg, out_dir=out, progress=False)
    return out


@pytest.fixture(scope="module")
def toy_report(toy_dir):
    import mechtrunc as mt

    return mt.write_report(toy_dir, progress=False)


@pytest.fixture(scope="module")
def direct(toy_dir):
    """The section's computations done directly with the library on the run's model."""
    import mechtrunc as mt

    model, cfg, task = mt.load_run(toy_dir)
    clean, corrupted = mt.recall_pair(task, n=64)
    scan = mt.patching_scan(model, clean, corrupted, sites=("resid_pre", "attn_out", "mlp_out", "z"), direction="both")
    prompts = task.test_set(cfg.test_size, seed=cfg.seed + 10_000).to_prompts()
    lens = mt.logit_lens_compare(model, prompts, {
        "full model": [],
        "mlp.W_in L1 keep 0.1": [mt.Truncate("mlp.W_in", layer=1, keep=0.1)],
        "FFN L1 removed": [mt.Ablate("mlp", layer=1)],
    })
    noisy = task.sample(cfg.test_size, seed=cfg.seed + 20_000).to_prompts(clean=False)
    generic = mt.generic_tokens(noisy, k=1)
    ranked = mt.rank_generic_components(model, "mlp.W_out", None, generic, prompts=prompts, itos=task.itos)
    return {"scan": scan, "lens": lens, "ranked": ranked, "generic": generic, "task": task}


def _section_html(html: str) -> str:
    m = re.search(r'<section id="causal" data-section="causal">(.*?)</section>', html, flags=re.S)
    assert m, "no Causal localisation section in the page"
    return m.group(1)


def _plotly_data(html: str, div: str) -> list[dict]:
    """The trace list of the plotly figure drawn into ``div``, as the page holds it."""
    m = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div) + r'",\s*', html)
    assert m, f"no plotly figure {div} in the page"
    data, _ = json.JSONDecoder().raw_decode(html, m.end())
    return data


def _array(v) -> np.ndarray:
    """A plotly JSON array: a plain list or a typed array (``{"dtype", "bdata"}``)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v, dtype=float)


def _causal_figures(html: str) -> list[str]:
    return re.findall(r'id="(causal-fig\d+)"', _section_html(html))


# ----------------------------------------------------------------------------------------
def test_toy_report_has_the_causal_section(toy_report):
    ids = [s.id for s in toy_report.sections]
    assert "causal" in ids and ids.index("causal") == ids.index("attribution") + 1
    sec = toy_report.sections[ids.index("causal")]
    assert sec.title == "Causal localisation"
    html = toy_report.path.read_text()
    body = _section_html(html)
    assert "1 = the clean run's metric, 0 = the corrupted run's" in body
    run = toy_report.source
    assert f"mechtrunc patch scan {run} --direction both --n 64" in body
    assert f"mechtrunc lens logit {run} --truncate mlp.W_in:1:0.1 --remove-ffn 1" in body
    assert len(_causal_figures(html)) == 2  # the patching heatmaps and the logit lens
    assert body.count("<h3>") == 3  # largest effects, logit lens, generic components
    assert '<a href="#causal">Causal localisation</a>' in html


def test_causal_section_numbers_equal_a_direct_patching_scan(toy_report, direct):
    """Every heatmap cell of the page is the effect of mt.patching_scan on the same model and
    recall_pair (to 1e-6), or, when the clean - corrupted gap is not resolved (this 40-step
    model's: its effects are undefined), the raw change, with a warning naming the gap; the
    largest-effects table, the logit-lens lines and the generic components are the library's
    numbers too."""
    html = toy_report.path.read_text()
    heat, lens_fig = _causal_figures(html)
    scan = direct["scan"]
    a = scan.attrs
    shown = "effect" if a["normalised"] else "change"
    if not a["normalised"]:
        assert scan["effect"].isna().all()
        from mechtrunc.analysis.patching import raw_change

        scan = scan.assign(change=raw_change(scan))
        assert (f"The clean - corrupted gap of {a['metric']} is {a['gap']:+.4f} "
                f"[{a['gap_low']:+.4f}, {a['gap_high']:+.4f}]") in _section_html(html)
    want = {}
    for r in scan.to_dict("records"):
        if r["site"] == "z" and r["position"] != "all":
            continue  # the z panels show every head at all positions
        col = f"H{int(r['head'])}" if r["site"] == "z" else str(r["position"])
        want[(r["direction"], r["site"], f"L{r['layer']}", col)] = float(r[shown])
    got = {}
    for trace in _plotly_data(html, heat):
        assert trace["type"] == "heatmap"
        direction, site = trace["name"].split(" ")
        z = trace["z"]
        for i, y in enumerate(trace["y"]):
            for j, x in enumerate(trace["x"]):
                got[(direction, site, y, x)] = z[i][j]
    assert set(got) == set(want)
    assert {k[0] for k in got} == {"denoising", "noising"} and {k[1] for k in got} == {"resid_pre", "attn_out", "mlp_out", "z"}
    for key, v in want.items():
        if math.isnan(v):
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(v, abs=1e-6), key
    body = _section_html(html)
    a = scan.attrs
    assert f"clean {a['clean']:.4g}, corrupted {a['corrupted']:.4g}" in body
    # the largest-effects table: the CLI's ranking (denoising towards 1, noising towards 0; or the
    # size of the raw change)
    if a["normalised"]:
        moved = scan["effect"].where(scan["direction"] == "denoising", 1 - scan["effect"])
    else:
        moved = scan["change"].abs()
    top = scan.assign(moved=moved).sort_values("moved", ascending=False, kind="stable").head(10)
    table = re.search(r"<h3>Largest effects</h3>.*?<tbody>(.*?)</tbody>", body, flags=re.S).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S)
    assert len(rows) == 10
    for row, r in zip(rows, top.itertuples(index=False)):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert cells[:3] == [r.direction, r.site, str(r.layer)]
        assert cells[4] == str(r.position)
        assert float(cells[6]) == pytest.approx(getattr(r, shown), rel=1e-3, abs=1e-3)
    # the logit lens: P(answer) and P(noise) of each run along the stream
    lens = direct["lens"]
    traces = {t["name"]: t for t in _plotly_data(html, lens_fig)}
    assert len(traces) == 6
    for label, sub in lens.groupby("label", sort=False):
        sub = sub.sort_values("depth")
        for m, name in (("p_answer", "P(answer)"), ("p_noise", "P(noise)")):
            t = traces[f"{name}, {label}"]
            np.testing.assert_allclose(_array(t["y"]), sub[m].to_numpy(), atol=1e-6)
            np.testing.assert_array_equal(_array(t["x"]), sub["depth"].to_numpy())
    # the generic components: mt.rank_generic_components' top 5 by generic_score
    best = direct["ranked"].sort_values("generic_score", ascending=False, kind="stable").head(5)
    gen = re.search(r"<h3>Top generic components</h3>.*?<tbody>(.*?)</tbody>", body, flags=re.S).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", gen, flags=re.S)
    assert len(rows) == 5
    for row, r in zip(rows, best.itertuples(index=False)):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert [int(cells[0]), int(cells[1])] == [int(r.layer), int(r.component)]
        assert float(cells[3]) == pytest.approx(r.generic_score, rel=1e-3)


def test_causal_section_commands_give_the_same_numbers(toy_report, toy_dir, direct, capsys):
    """The command lines the section names reproduce its scan and its logit lens."""
    from mechtrunc.cli import main

    assert main(["patch", "scan", str(toy_dir), "--direction", "both", "--n", "64", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    import pandas as pd

    cli = pd.DataFrame(out["rows"])
    cli["head"] = cli["head"].astype("Int64")
    scan = direct["scan"]
    merged = scan.merge(cli, on=SCAN_KEYS, suffixes=("", "_cli"), validate="one_to_one")
    assert len(merged) == len(scan) == len(cli)
    np.testing.assert_allclose(merged["effect_cli"].astype(float), merged["effect"].astype(float), atol=1e-6)
    assert main(["lens", "logit", str(toy_dir), "--truncate", "mlp.W_in:1:0.1", "--remove-ffn", "1", "--json"]) == 0
    rows = pd.DataFrame(json.loads(capsys.readouterr().out)["rows"])
    lens = direct["lens"]
    assert list(rows["label"].unique()) == list(lens["label"].unique())
    np.testing.assert_allclose(rows["p_noise"], lens["p_noise"], atol=1e-6)


def test_causal_section_without_a_model(toy_dir, tmp_path):
    """No loadable model: the section says why instead of failing the report."""
    import shutil

    from mechtrunc.report import read_result
    from mechtrunc.report.context import Context
    from mechtrunc.report.toy import causal_section

    d = tmp_path / "run"
    shutil.copytree(toy_dir, d)
    (d / "model.safetensors").write_bytes(b"not a model")
    ctx = Context(read_result(d))
    sec = causal_section(ctx)
    assert sec.figures == [] and "Not computed" in "".join(p for p in sec.parts if isinstance(p, str))


# ----------------------------------------------------------------------------------------
def test_patching_heatmap(direct, tmp_path):
    import mechtrunc as mt

    scan = direct["scan"]
    # the plotting itself, on effects normalised whatever the gap (this model's is unresolved, so
    # the scan's own effects are NaN)
    scan = scan.assign(effect=(scan["value"] - scan["corrupted"]) / (scan["clean"] - scan["corrupted"]))
    fig = mt.viz.patching_heatmap(scan, tmp_path / "patch.png")
    assert (tmp_path / "patch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in axes] == [f"{d}: {s}" for d in ("denoising", "noising")
                                               for s in ("resid_pre", "attn_out", "mlp_out", "z")]
    # each panel's image holds the table's effects: resid_pre is layers x (all, trigger1, after1, end)
    img = axes[0].images[0].get_array()
    sub = scan[(scan["direction"] == "denoising") & (scan["site"] == "resid_pre")]
    for i, layer in enumerate(sorted(sub["layer"].unique())):
        for j, pos in enumerate(["all", "trigger1", "after1", "end"]):
            v = sub[(sub["layer"] == layer) & (sub["position"] == pos)]["effect"].iloc[0]
            assert float(img[i, j]) == pytest.approx(float(v), abs=1e-6)
    assert [t.get_text() for t in axes[3].get_xticklabels()] == ["0"]  # z: one head
    texts = [t.get_text() for t in axes[0].texts]
    assert len(texts) == img.size and "-0.00" not in texts  # small grid: every cell annotated
    # diverging around 0, and 1 = clean marked on the colour bar
    norm = axes[0].images[0].norm
    assert norm.vcenter == 0 and norm.vmin == -norm.vmax and norm.vmax >= 1
    cbar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"][0]
    labels = [t.get_text() for t in cbar.get_yticklabels()]
    assert "1 = clean" in labels and "0 = corrupted" in labels
    one = mt.viz.patching_heatmap(scan, directions=["noising"], sites=["mlp_out"], annotate=False)
    assert [ax.get_title() for ax in one.axes if ax.get_label() != "<colorbar>"] == ["noising: mlp_out"]
    assert not one.axes[0].texts
    with pytest.raises(ValueError, match="missing column"):
        mt.viz.patching_heatmap(scan.drop(columns="effect"))
    with pytest.raises(ValueError, match="not in the table"):
        mt.viz.patching_heatmap(scan, sites=["resid_mid"])


# ----------------------------------------------------------------------------------------
@pytest.mark.browser
def test_causal_section_renders_offline_in_chromium(toy_report, tmp_path):
    """The section alone in a page: no request leaves it, no console error, both charts drew
    (heatmaps and lens lines) at their set size."""
    from test_report import _browser_or_fail

    _browser_or_fail()
    from mechtrunc.report import Report
    from mechtrunc.report.browser import check_page

    sec = next(s for s in toy_report.sections if s.id == "causal")
    page = Report("causal only", "toy", sections=[sec]).save(tmp_path / "causal.html")
    res = check_page(page, screenshot=tmp_path / "causal.png")
    assert res.blocked == [] and res.failed == [], (res.blocked, res.failed)
    assert res.console_errors == [], res.console_errors
    assert res.sections == ["about", "causal"]
    assert [c[0] for c in res.charts] == ["causal-fig1", "causal-fig2"]
    for chart_id, w, h, n_nodes in res.charts:
        assert w >= 600 and h >= 250 and n_nodes > 20, (chart_id, w, h, n_nodes)
    assert res.charts[0][3] > 200  # 8 heatmap panels with their annotations
    assert res.screenshot_std > 10
