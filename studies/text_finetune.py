"""Fine-tuning a small text transformer pretrained as a language model, ULMFiT's own setting.

Source task: next-byte prediction (``objective="lm"``) on 64-byte windows of five standard-library
packages (``pystdlib`` classes 0-4: asyncio, email, multiprocessing, unittest, xml). Target task
(``pystdlib_edits``): windows of five other packages (http, logging, importlib, urllib,
concurrent), each left as it is or edited in order only (reversed, halves swapped, 4-byte blocks
shuffled, bytes shuffled); the label is the edit. Every class has the same byte histogram, so
a probe must read how code is written, not which bytes it uses: what a language model learns
and random weights do not have.

Strategies: the L-BFGS linear probe on the pretrained backbone and on the same backbone with
random weights (``random_probe_lbfgs``: the transfer baseline), full fine-tuning, gradual unfreezing,
ULMFiT (gradual unfreezing with discriminative rates, Howard & Ruder 2018), BitFit, and the
PEFT strategies (peft's LoRA, DoRA and (IA)^3 on the blocks' Linears; Houlsby adapters;
LayerNorm tuning), all at 100 labels per class. (``vpt`` is left out: it inserts prompts after
a class token, which this causal, mean-pooled model does not have.) The claim: the pretrained probe beats the random-weights probe by at
least 10 points of test accuracy (CI above 10).

Protocol differences from ULMFiT: a 2-block, 64-wide byte-level transformer instead of a
3-layer AWD-LSTM on words; the language model is trained once on source text only (no target
LM fine-tuning stage); SGD with Nesterov momentum and a cosine schedule for the classifier
(the paper: Adam and slanted triangular rates); and the target is a synthetic order-edit task,
not sentiment or topic labels.

Runtime: 298 s for the whole command on a quiet 2-core machine from a fresh clone with a cold
cache, the language model's pretraining included (run 20261203-190948-7c1d, one process); the
first full run took 329 s (run 20261203-153337-5cb0, ``--jobs`` 2, the default). That run:
pretrained probe 38.7% against 20.5 ± 4.4% on random weights (3 seeds, 1,000 test windows), but
the claim was undetermined: both probes' best C (5.1e4) sat at the top of the paper's
[1e-6, 1e5] range, and the only interior trial (C = 0.78) was 6 points lower. A 12-trial search of
both probes (run 20261203-172335-3844) then showed a flat top: 40.8-41.6% validation accuracy from
C = 175 to 1e5, within one validation standard error (3.1 points on 250 windows). So both probes
now try C = 100 first, and an edge best that an interior trial matches within that error is no
flag (``harness.analysis.tables``). With that, the probe cells alone (``--strategies
linear_probe_lbfgs,random_probe_lbfgs``, run 20261203-172911-dee8) give 38.7% against 20.5%:
the claim **passes**, +18.2 [13.7, 22.7] points against the bar of 10; so does the whole study
from a fresh clone (run 20261203-190948-7c1d, 298 s with a cold cache, one process, as
``--jobs 1`` gives: the same effect and interval). Fine-tuning (run
20261203-153337-5cb0): ULMFiT 37.0 ± 3.9%, adapter 37.0 ± 4.5%, (IA)^3 36.6 ± 2.6%, LN tuning 35.2 ± 7.7%, BitFit 33.3 ± 1.6%, full 32.9 ± 5.6%, gradual
unfreezing 25.7 ± 7.0%, DoRA 22.3 ± 9.3%, LoRA 21.0 ± 6.5% (3 trials a cell; several best
learning rates at the top of their range: flagged in the summary). Forgetting is not measured
here: the next-token head is not kept with the checkpoint (see ``harness.run.sweep``).
Before it, a run with the SGD probes gave 34.6 / 35.5 / 34.9% for ``linear_probe`` against
19.9 / 18.0 / 19.7% for ``random_probe``; sklearn's logistic regression on the same
checkpoint's features (C chosen on validation) gave 38.5% against 19.5% at 100 shots.
"""

from __future__ import annotations

from harness.analysis.claims import CLAIMS, Claim, Verdict, above, contrast_ci, final_sample
from harness.config.spec import PretrainRecipe, StudySpec
from harness.registry import STUDIES

STRATEGIES = ("linear_probe_lbfgs", "random_probe_lbfgs", "full_finetune", "progressive_unfreezing",
              "ulmfit", "bias_only", "lora", "dora", "ia3", "adapter", "ln_tuning")
# the language model: next byte of asyncio/email/multiprocessing/unittest/xml windows (3,000
# training windows, 46 steps an epoch); AdamW, as transformers need
LM_RECIPE = PretrainRecipe(model="text_transformer", dataset="pystdlib", classes=(0, 1, 2, 3, 4),
                           objective="lm", optimizer="adamw", epochs=6, batch_size=64, lr=3e-3,
                           weight_decay=0.01)
# the probes of the claim: L-BFGS logistic regression, C chosen on validation (the SGD probe on
# cached features, 4 epochs, reached 34% against 25% on validation: under-trained at 100 shots)
PROBE, RANDOM = "linear_probe_lbfgs", "random_probe_lbfgs"
MARGIN = 10.0  # points: the bar for "transfer is real"
PER = ("device", "dataset", "model", "budget", "execution")


@STUDIES.register("text_finetune")
def text_finetune() -> StudySpec:
    return StudySpec(
        name="text_finetune",
        description=__doc__.strip().splitlines()[0],
        dataset="pystdlib_edits",
        classes=None,  # the five edits
        model="text_transformer",
        pretrain=LM_RECIPE,
        strategies=STRATEGIES,
        budgets=(100,),  # 500 labelled windows: a few-shot-ish budget, where pretraining matters
        epochs=4,  # gradual unfreezing (one block an epoch) trains every block from epoch 4 on
        batch_size=32,  # 15 steps an epoch
        trials=3,
        seeds=3,
        val_per_class=50,  # 250 validation windows select: half the training labels
        # both probes try C = 100 first: inside the flat top of C that a 12-trial search of both
        # probes found (41-42% validation from C = 175 to the range's top 1e5 for the pretrained
        # one; chance at every C for random weights), so 3 trials see an interior config there
        enqueue={PROBE: {"C": 100.0}, RANDOM: {"C": 100.0}},
    )


def _transfer(tables) -> Verdict:
    pre = final_sample(tables, strategy=PROBE, label=f"{PROBE} (pretrained)")
    rnd = final_sample(tables, strategy=RANDOM, label=f"{RANDOM} (random weights)")
    ci = contrast_ci([(1, pre), (-1, rnd)], scale=100)
    return Verdict.of(ci, "points", above(ci.low, MARGIN),
                      f"linear probe on the pretrained backbone {100 * pre.mean:.1f}% vs on random "
                      f"weights {100 * rnd.mean:.1f}% ({len(pre.values)} and {len(rnd.values)} "
                      f"seeds); the bar is {MARGIN:g} points")


@CLAIMS.register("text_finetune")
def claims() -> list[Claim]:
    return [
        Claim("pretrained_probe_beats_random_probe", "issue 12",
              f"transfer is real: a linear probe on the language-model-pretrained backbone is at "
              f"least {MARGIN:g} points more accurate on the target task than the same probe on "
              f"random weights (test accuracy difference, CI above {MARGIN:g})", _transfer,
              per=PER),
    ]
