"""Side by side: the same run in two precisions (e.g. the demo in f32 and in bf16).

    robust-ssl export runs/demo --out /tmp/f32.csv
    robust-ssl export runs/demo-bf16 --out /tmp/bf16.csv
    python3 tools/compare_precision.py /tmp/f32.csv /tmp/bf16.csv [--ignore seed]

Cells are matched on every column of the long-format export but the key (which names the
precision), the value and any column given to --ignore (e.g. `--ignore seed`: the same run with
another attack seed, the spread a precision's difference is to be read against). The bound checked is issue 17's: scores in [0, 1] (accuracy, mIoU,
pixel accuracy, delta1-3) within 1 point, error metrics (RMSE and the other depth errors) within 2 %
relative. Prints a Markdown table of the primary metrics (accuracy, mIoU, RMSE) and a count of every
metric within and beyond the bound; exits 1 when any is beyond.
"""
import csv
import sys

SCORES = {"accuracy", "miou", "pixel_accuracy", "delta1", "delta2", "delta3"}
PRIMARY = {"accuracy", "miou", "rmse"}


def read(path, ignore):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for r in rows:
        ident = tuple((k, v) for k, v in r.items() if k not in ("key", "value", *ignore))
        out[ident] = float(r["value"])
    return out


def main():
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--ignore", action="append", default=[], help="a column not to match cells on (repeatable)")
    args = p.parse_args()
    a_path, b_path = args.a, args.b
    a, b = read(a_path, args.ignore), read(b_path, args.ignore)
    missing = set(a) ^ set(b)
    if missing:
        sys.exit(f"the runs do not hold the same cells: {len(missing)} differ (same experiment in both?)")
    within = beyond = 0
    lines = []
    for ident in sorted(a):
        d = dict(ident)
        m, va, vb = d["metric"], a[ident], b[ident]
        if m in SCORES:
            diff, ok, shown = 100 * (vb - va), abs(100 * (vb - va)) <= 1.0, f"{100 * va:.2f} % | {100 * vb:.2f} % | {100 * (vb - va):+.2f} pt"
        else:
            rel = (vb - va) / va if va else 0.0
            diff, ok, shown = rel, abs(rel) <= 0.02, f"{va:.3f} | {vb:.3f} | {100 * rel:+.1f} %"
        within += ok
        beyond += not ok
        if m in PRIMARY and d["predictor"] != "baseline":
            what = "clean" if d["predictor"] == "clean" else f"{d['attack']} {d['eps_text']}" + (f" on {d['attacked']}" if d["attacked"] and d["attacked"] != d["task"] else "")
            if d["predictor"] == "clean" and d["condition"] != "clean":
                continue  # the clean figure of every attack cell repeats the clean cell's
            lines.append(f"| {d['task']} | {m} | {what} | {shown} | {'within' if ok else '**beyond**'} |")
    print(f"| task | metric | condition | {a_path} | {b_path} | difference | bound |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\nevery metric of every cell: {within} within the bound, {beyond} beyond")
    sys.exit(1 if beyond else 0)


if __name__ == "__main__":
    main()
