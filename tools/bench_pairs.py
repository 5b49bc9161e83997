"""The table of `tools/bench_attack.sh` and `tools/bench_finetune.sh`: pairs of runs (ours, then
PyTorch's, each a `--json` line) read back, each pair printed with its ratio, and the median ratio
where there are several.

    python3 tools/bench_pairs.py KEY LABEL STEPS OURS_1 THEIRS_1 [OURS_2 THEIRS_2 ...]
"""
import json
import statistics
import sys


def main():
    key, label, steps, *raw = sys.argv[1:]
    runs = [json.loads(r) for r in raw]
    pairs = list(zip(runs[0::2], runs[1::2]))
    if not pairs:
        sys.exit("bench_pairs.py: no runs given")
    o, t = pairs[0]
    print(f"ViT-S/14 @{o['size']}px, batch {o['batch']}, {t['precision']}, {t['threads']} threads, {steps} steps (torch {t['torch']})")
    m = o["machine"]
    print(f"machine: {m['cpu'] or 'unknown CPU'}; {' '.join(m['features'])}; our matrix products: {m['gemm_kernels']} kernels; bf16: {m.get('bf16_kernel')}")
    print("| | robust-ssl | PyTorch eager | robust-ssl / PyTorch |")
    print("|---|---|---|---|")
    digits = 3 if key == "attack_steps_per_s" else 4
    ratios = []
    for i, (o, t) in enumerate(pairs, 1):
        r, p = o[key], t[key]
        ratios.append(r / p)
        name = label if len(pairs) == 1 else f"{label}, pair {i}"
        print(f"| {name} | {r:.{digits}f} ({1 / r:.2f} s/step) | {p:.{digits}f} ({1 / p:.2f} s/step) | {r / p:.2f}x |")
    if len(pairs) > 1:
        print(f"median of {len(pairs)} pairs: {statistics.median(ratios):.2f}x (from {min(ratios):.2f}x to {max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
