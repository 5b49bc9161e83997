"""Reference runs of SEA's worst-case mIoU over attacks (Croce, Singh & Hein, "Towards Reliable
Evaluation and Fast Training of Robust Semantic Segmentation Models", ECCV 2024; code
github.com/nmndeep/Robust-Segmentation, tools/worse_only.py, `evalSEA.worst_case_miou`) on fixed
random label and prediction maps (tests/fixtures/attacks/worst_miou.json).

    python3 tools/gen_worst_miou_fixture.py

The procedure is restated from the source (nothing is imported from it), in plain Python:

- per image i and attack a, per class c: the intersection |{label = c and prediction = c}| and
  the union |{label = c}| + |{prediction = c}| - intersection (`update_fn_indiv`); every pixel of
  these maps is labelled (the source counts predictions on ignored pixels into the union; our
  scores do not, so the fixture has none);
- the running sums start from attack 0 on every image (SEA's first loss, mask-ce-bal), and the
  mIoU is the mean over classes with a non-zero union (`_compute_miou`);
- up to 1000 rounds: the images in an order shuffled by Python's `random` seeded with 225 (the
  source's SEED); for each image and each attack, the running sums with that image switched
  from its selected attack to this one; the mIoU of that estimate skips the classes whose
  running union (before the switch) is zero and divides by union + 1e-8
  (`_compute_miou_subtraction`); the switch is kept if that estimate is below `final_miou`,
  which the source refreshes after each image (not after each switch: an image's later attack
  is compared with the mIoU before the image's first switch). A round that lowers the mIoU by
  at most 1e-6 ends the search.

As published, that search can stop short of a point where no single switch lowers the mIoU:
within one image, an attack is kept if its estimate is below the mIoU from before the image's
first switch, so after a better attack the image's earlier attack, tried later in the attack
order, passes too (its estimate, with the 1e-8, is a hair below that stale value) and the image
switches back. The printout gives SEA's figure beside the start's and the per-image pick's.

Saved per case: the class count, per image and attack the (label, prediction, pixels) counts,
SEA's final mIoU, its selection per image, the mIoU of attack 0 alone (where SEA starts) and of
the per-image pick by pixel accuracy.
"""
import json
import os
import random
import statistics

SEED = 225


def stats(label, pred, n_cls):
    inter = [0] * n_cls
    union = [0] * n_cls
    for c in range(n_cls):
        t = [l == c for l in label]
        p = [q == c for q in pred]
        i = sum(1 for a, b in zip(label, pred) if a == c and b == c)
        inter[c] = i
        union[c] = sum(t) + sum(p) - i
    return inter, union


def miou(inter, union):
    return statistics.mean(a / b for a, b in zip(inter, union) if b != 0)


def miou_subtraction(run_i, run_u, d_i, d_u):
    ious, ints, unis = [], [], []
    for a, b, c, d in zip(run_i, run_u, d_i, d_u):
        if b == 0:
            continue
        ints.append(a + c)
        unis.append(b + d)
        ious.append(ints[-1] / (unis[-1] + 1e-8))
    return statistics.mean(ious), ints, unis


def sea_worst_case_miou(ints, unions):
    """ints[a][i][c], unions[a][i][c] -> (final mIoU, selection per image)."""
    n_att, n_img, n_cls = len(ints), len(ints[0]), len(ints[0][0])
    run_i = [sum(ints[0][i][c] for i in range(n_img)) for c in range(n_cls)]
    run_u = [sum(unions[0][i][c] for i in range(n_img)) for c in range(n_cls)]
    rng = random.Random(SEED)
    final = miou(run_i, run_u)
    sel = [0] * n_img
    prev_best = 10
    for _ in range(1000):
        order = list(range(n_img))
        rng.shuffle(order)
        for idx in order:
            for a in range(n_att):
                d_i = [ints[a][idx][c] - ints[sel[idx]][idx][c] for c in range(n_cls)]
                d_u = [unions[a][idx][c] - unions[sel[idx]][idx][c] for c in range(n_cls)]
                est, new_i, new_u = miou_subtraction(run_i, run_u, d_i, d_u)
                if est < final:
                    sel[idx] = a
                    run_i, run_u = new_i, new_u
            final = miou(run_i, run_u)
        if prev_best - final <= 1e-6:
            break
        prev_best = final
        final = miou(run_i, run_u)
    return final, sel, len(run_i) == n_cls


def pairs(label, pred):
    counts = {}
    for l, p in zip(label, pred):
        counts[(l, p)] = counts.get((l, p), 0) + 1
    return [[l, p, n] for (l, p), n in sorted(counts.items())]


def case(rng, n_img, n_att, n_cls, pixels, strength):
    labels, preds = [], []
    for _ in range(n_img):
        # Blocks of a few classes per image, so that classes are missing from some images.
        present = rng.sample(range(n_cls), rng.randint(1, min(3, n_cls)))
        labels.append([rng.choice(present) for _ in range(pixels)])
    for a in range(n_att):
        preds.append([])
        for i in range(n_img):
            s = strength[a] * rng.random()
            preds[a].append([rng.randrange(n_cls) if rng.random() < s else l for l in labels[i]])
    ints = [[stats(labels[i], preds[a][i], n_cls)[0] for i in range(n_img)] for a in range(n_att)]
    unions = [[stats(labels[i], preds[a][i], n_cls)[1] for i in range(n_img)] for a in range(n_att)]
    final, sel, all_classes_kept = sea_worst_case_miou(ints, unions)
    # SEA's estimate drops classes whose running union is zero; the saved cases have none, so
    # its running sums keep one entry per class throughout.
    assert all_classes_kept
    sum_over = lambda choice, t: [sum(t[choice[i]][i][c] for i in range(n_img)) for c in range(n_cls)]
    acc = lambda a, i: sum(1 for l, p in zip(labels[i], preds[a][i]) if l == p)
    per_image = [min(range(n_att), key=lambda a: (acc(a, i), a)) for i in range(n_img)]
    return {
        "classes": n_cls,
        "scores": [[pairs(labels[i], preds[a][i]) for a in range(n_att)] for i in range(n_img)],
        "sea_miou": final,
        "sea_selection": sel,
        "first_attack_miou": miou(sum_over([0] * n_img, ints), sum_over([0] * n_img, unions)),
        "per_image_pick": per_image,
        "per_image_pick_miou": miou(sum_over(per_image, ints), sum_over(per_image, unions)),
    }


def main():
    rng = random.Random(0)
    cases = [
        case(rng, 8, 3, 4, 36, [0.5, 0.6, 0.4]),
        case(rng, 20, 3, 5, 64, [0.7, 0.5, 0.6]),
        case(rng, 40, 4, 6, 49, [0.6, 0.6, 0.8, 0.3]),
        case(rng, 60, 3, 8, 36, [0.9, 0.7, 0.5]),
    ]
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "attacks", "worst_miou.json")
    with open(out, "w") as f:
        json.dump({"source": "tools/gen_worst_miou_fixture.py", "cases": cases}, f, separators=(",", ":"))
    for c in cases:
        print(f"{len(c['scores'])} images: SEA {c['sea_miou']:.6f}, first attack {c['first_attack_miou']:.6f}, "
              f"per-image pick {c['per_image_pick_miou']:.6f}")


if __name__ == "__main__":
    main()
