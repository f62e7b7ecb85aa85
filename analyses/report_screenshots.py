"""Build one report of each kind and screenshot it (the images in docs/img and the README).

    python analyses/report_screenshots.py --toy runs/demo --work out/report-examples --img docs/img

- toy: the report of a trained toy run (``make demo`` writes runs/demo);
- truncation: a LASER grid on a small GPT-NeoX trained on noisy in-context recall
  (``mechtrunc.models.testing.train_neox_recall``, saved with save_pretrained; everything offline);
- checkpoints: the same model retrained from scratch for 0, 4, 16, 64, 128 steps (training is a
  pure function of the seed, so "step s" is the model after s steps), full vs truncated.

Prints the size and build time of each report.  Needs playwright and Debian's chromium.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import mechtrunc as mt
from mechtrunc.models.hf import load_model
from mechtrunc.report.browser import check_page
from mechtrunc.studies import best_configuration, as_truncate, checkpoint_study, summarise_study, truncation_study
from mechtrunc.models.testing import train_neox_recall
from mechtrunc.tasks.recall import RecallConfig


def neox(out: Path, steps: int):
    if (out / "config.json").is_file():
        from mechtrunc.tasks.recall import RecallTask

        return RecallTask(RecallConfig(alpha=0.5, seq_len=64))
    _, task, _ = train_neox_recall(out, task_config=RecallConfig(alpha=0.5, seq_len=64), n_layers=2, d_model=64,
                                   n_heads=4, steps=steps, seed=0)
    return task


# the sections shown in the README image of each report kind
README_SECTIONS = {"toy": ["training", "truncation"], "truncation": ["heatmaps", "best"],
                   "checkpoints": ["about", "curves"]}


def shoot_sections(html: Path, png: Path, sections: list[str], width: int = 1300) -> None:
    """A PNG of the page from the top of the first section to the bottom of the last one."""
    from playwright.sync_api import sync_playwright

    from mechtrunc.report.browser import find_chromium

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:")) else r.abort())
        page.goto(html.resolve().as_uri())
        page.wait_for_timeout(2500)
        boxes = [page.locator(f"section#{s}").bounding_box() for s in sections]
        top, bottom = boxes[0]["y"], max(b["y"] + b["height"] for b in boxes)
        png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(png), full_page=True, clip={"x": 0, "y": top, "width": width, "height": bottom - top})
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--toy", default="runs/demo")
    ap.add_argument("--work", default="out/report-examples")
    ap.add_argument("--img", default="docs/img")
    ap.add_argument("--neox-steps", type=int, default=150)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny models: one thread is faster on a busy machine
    work, img = Path(args.work), Path(args.img)
    built = {}

    t0 = time.perf_counter()
    built["toy"] = (mt.write_report(args.toy, progress=False), time.perf_counter() - t0)

    task = neox(work / "neox", args.neox_steps)
    bridge = load_model(work / "neox")
    prompts = task.test_set(32, seed=1).to_prompts()
    df = truncation_study(bridge, prompts, matrices=("mlp.W_in", "mlp.W_out"), keeps=(1, 0.5, 0.2, 0.1, 0.05, 0.01),
                          out=work / "truncation", progress=False)
    summarise_study(bridge, prompts, df, metric="logit_diff_noise", out_dir=work / "truncation")
    t0 = time.perf_counter()
    built["truncation"] = (mt.write_report(work / "truncation", model=bridge, prompts=prompts, progress=False,
                                     command="python analyses/report_screenshots.py (truncation example)"),
                           time.perf_counter() - t0)

    steps = [0, 16, 64, 256, args.neox_steps]
    for s in steps:
        neox(work / f"ckpt/step{s}", s)
    best = as_truncate(best_configuration(df, "logit_diff_noise"))
    checkpoint_study(lambda s: load_model(work / f"ckpt/step{s}"), steps, prompts, truncation=best,
                     out=work / "checkpoints", progress=False)
    t0 = time.perf_counter()
    built["checkpoints"] = (mt.write_report(work / "checkpoints", progress=False,
                                      command="python analyses/report_screenshots.py (checkpoint example)"),
                            time.perf_counter() - t0)

    for kind, (rep, secs) in built.items():
        res = check_page(rep.path, screenshot=Path(args.work) / f"report-{kind}-full.png", full_page=True)
        shoot_sections(rep.path, img / f"report-{kind}.png", README_SECTIONS[kind])
        print(f"{kind}: {rep.path} {rep.path.stat().st_size / 1e6:.2f} MB, built in {secs:.1f} s; "
              f"{len(res.charts)} charts, {len(res.views)} views, blocked {len(res.blocked)}, "
              f"console errors {len(res.console_errors)}")


if __name__ == "__main__":
    main()
