"""Active querying: which synthetic images a query budget pays the teacher for, chosen in rounds.

With a query budget smaller than its plan, a synthetic method makes its whole pool of synthetic
images (the plan's MixUp and CVAE images: more than the budget buys) and asks the teacher about
the images a student learns most from, in rounds (pool-based active learning; Settles 2009,
"Active Learning Literature Survey", §3.1 uncertainty sampling):

1. round 1 labels a uniform draw of the round's quota (nothing is known yet);
2. each later round trains a *proxy student* (the run's student architecture, ``proxy_epochs``
   over what is labelled so far), scores every unlabelled pool image by the proxy's margin
   p_(1) - p_(2) between its two most probable classes, and labels the quota of lowest margin,
   filled round-robin over the proxy's predicted classes so that one confusable pair of classes
   cannot take the whole quota (class-balanced uncertainty). This is Active MixUp's rule (Wang et
   al., "Neural Networks Are More Productive Teachers Than Human Raters: Active Mixup for
   Data-Efficient Knowledge Distillation From a Blackbox Model", CVPR 2020, §3.2: query the
   synthetic images the student is least confident about), with the margin as the confidence
   (Scheffer et al. 2001) and the class balance added here.

Every round's choice is persisted (:class:`RoundState`, ``active_rounds-<fp>.npz`` in the work dir)
*before* its images are sent, and every answer is kept by the teacher's ledger as it arrives, so a
killed run resumes at the round it was in and pays no query twice: earlier rounds' images are
answered from the ledger, the interrupted round's choice is read back (not recomputed) and only its
unanswered images are sent.

An answer paid for is used, whatever chose it. The state is keyed by the pool alone (the method and
its MixUp and CVAE settings, beside the run's inputs), not by the settings that choose or cost
nothing: a rerun with another number of rounds, another selection, other proxy or assistant epochs
or fewer ``labelled_images`` starts from every round stored, and a raised budget adds rounds after
them. Pool images the ledger answers that no stored round holds (a state set aside as damaged,
rounds of an earlier process that did not persist) are taken first, as a round of selection
``ledger``, at no query. Only the images still to buy are chosen and counted against the budget.

The pool images the budget did not buy are not thrown away (``assistant``, by default the
dataset's teacher architecture): a *teacher assistant* (Mirzadeh et al., "Improved Knowledge
Distillation via Teacher Assistant", AAAI 2020) is trained on every teacher-labelled image and gives
the rest of the pool its soft labels, at no query; the student then learns from both (the transfer
set's source ``assistant``). Chosen on the validation split (RESULTS.md, "Accuracy against teacher
queries", 10,000 queries, 3 seeds: validation 87.98% with an assistant trained 60 epochs, 87.76%
with 30, 87.15% without).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from absl import logging

from tfkd import errors
from tfkd import fs
from tfkd import workdir

SELECTIONS = ("margin", "random")


@dataclasses.dataclass(frozen=True)
class ActiveConfig:
    """How a query budget is spent on a synthetic method's pool (the FS-BBT family).

    Attributes:
      rounds: labelling rounds when the budget buys fewer images than the pool holds (>= 1); 0
        turns active querying off: the budget then cuts the plan (MixUp and CVAE images in their
        ratio, every image made is sent).
      selection: ``margin`` (class-balanced lowest proxy margin, the module docstring) or
        ``random`` (a uniform draw each round: the control).
      proxy_epochs: epochs the proxy student trains on the labelled images before a round scores
        the pool (>= 1).
      labelled_images: synthetic images to label, at most the pool; 0: set from the query budget
        (what it leaves after the real images and the teacher's evaluation), or all of the pool
        without a budget. Part of the transfer set's fingerprint.
      assistant: an architecture (:data:`tfkd.student.models.MODELS`) trained ``assistant_epochs`` on
        the teacher-labelled images to label the rest of the pool (module docstring); ``auto``:
        the dataset's teacher architecture (its :class:`tfkd.data.DatasetSpec`'s ``teacher``; none
        for the user's own images), resolved by :meth:`tfkd.config.DistillConfig.resolved`; empty: the
        rest of the pool is not used.
      assistant_epochs: the assistant's epochs (>= 1).
    """

    rounds: int = 4
    selection: str = "margin"
    proxy_epochs: int = 10
    labelled_images: int = 0
    assistant: str = "auto"
    assistant_epochs: int = 60

    def validate(self) -> None:
        """Raises :class:`tfkd.errors.ConfigError` naming the first field out of range."""
        checks = [("rounds", self.rounds >= 0, ">= 0 (0: off)"),
                  ("selection", self.selection in SELECTIONS, SELECTIONS),
                  ("proxy_epochs", self.proxy_epochs >= 1, ">= 1"),
                  ("labelled_images", self.labelled_images >= 0, ">= 0 (0: the budget's)"),
                  ("assistant", self.assistant in ("", "auto") or self.assistant in _models().MODELS,
                   f"'', 'auto' or one of {sorted(_models().MODELS)}"),
                  ("assistant_epochs", self.assistant_epochs >= 1, ">= 1")]
        errors.check_settings("active.", self, checks)


def _models():
    from tfkd.student import models
    return models


def quotas(total: int, rounds: int) -> list[int]:
    """Images each round labels: ``total`` split over ``rounds`` as evenly as integers allow (the
    first rounds take the remainder). Raises ValueError for rounds < 1 or total < 0 (the caller's
    bug: :func:`run_rounds` asks for at least one image in at least one round)."""
    if rounds < 1 or total < 0:
        raise ValueError(  # Programming error: run_rounds passes total >= 1, rounds >= 1.
            f"rounds={rounds}, total={total}: expected rounds >= 1 and total >= 0")
    base, extra = divmod(total, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def margins(probabilities: np.ndarray) -> np.ndarray:
    """p_(1) - p_(2) per row of ``probabilities`` float [n, K] (K >= 2): float32 [n] in [0, 1];
    small: the proxy hesitates between two classes."""
    top2 = -np.partition(-np.asarray(probabilities, np.float32), 1, axis=1)[:, :2]
    return (top2[:, 0] - top2[:, 1]).astype(np.float32)


def balanced_lowest(scores: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` rows of lowest ``scores`` float [n], taken round-robin over ``groups``
    int [n] (each group's lowest first; a group that runs out leaves its turns to the others).

    Returns int64 [min(k, n)], in the order taken. Raises ValueError for mismatched lengths (the
    caller's bug).
    """
    scores, groups = np.asarray(scores), np.asarray(groups)
    if scores.shape != groups.shape:
        raise ValueError(  # Programming error: callers score and group the same rows.
            f"scores {scores.shape} and groups {groups.shape}: expected one per row")
    order = np.lexsort((scores, groups))  # By group, then score ascending.
    sorted_groups = groups[order]
    starts = np.searchsorted(sorted_groups, sorted_groups, side="left")
    rank = np.arange(len(order)) - starts  # Place of each row within its group.
    # Round r takes every group's r-th lowest; within a round, lower scores first.
    taken = order[np.lexsort((scores[order], rank))]
    return taken[:k].astype(np.int64)


def choose(k: int, unlabelled: np.ndarray, config: ActiveConfig, rng: np.random.Generator,
           probabilities: np.ndarray | None) -> np.ndarray:
    """The ``k`` pool indices a round labels, from ``unlabelled`` int64 [m] (pool indices).

    ``probabilities`` float [m, K]: the proxy student's softmax on those images (None in round 1
    or for ``random``: a uniform draw). Returns sorted int64 [min(k, m)].
    """
    k = min(k, len(unlabelled))
    if probabilities is None or config.selection == "random":
        return np.sort(rng.choice(unlabelled, k, replace=False)).astype(np.int64)
    picked = balanced_lowest(margins(probabilities), np.argmax(probabilities, axis=1), k)
    return np.sort(unlabelled[picked]).astype(np.int64)


@dataclasses.dataclass
class RoundState:
    """The rounds chosen so far, persisted before their images are sent: ``chosen[r]`` int64 pool
    indices of round r, ``images[r]`` float32 [q_r, H, W, C] those images and ``selections[r]``
    what chose them (``random``, ``margin``, ``ledger``: answers found in the ledger; ``stored``:
    a state written before the selection was kept), for a pool of ``pool_size``. A resumed run
    labels the images read back, not the pool recomputed, so its ledger answers them whether or
    not synthesis is bit-for-bit repeatable."""

    pool_size: int
    chosen: list
    images: list
    selections: list = dataclasses.field(default_factory=list)

    def append(self, indices: np.ndarray, images: np.ndarray, selection: str) -> None:
        """Adds a round: int64 pool ``indices`` [q], their ``images`` [q, H, W, C]."""
        self.chosen.append(np.asarray(indices, np.int64))
        self.images.append(images)
        self.selections.append(selection)

    def save(self, path: str) -> None:
        """Writes ``.npz`` atomically (temp name, then rename)."""
        fs.save_npz(path, pool_size=np.asarray(self.pool_size),
                    lengths=np.asarray([len(c) for c in self.chosen], np.int64),
                    indices=np.concatenate(self.chosen), images=np.concatenate(self.images),
                    selections=np.asarray(self.selections, dtype=str))

    @staticmethod
    def check_file(path: str) -> None:
        """The work dir's check of a stored rounds file (:func:`tfkd.workdir.check`): readable,
        and consistent (:meth:`load`). Raises what :meth:`load` raises."""
        workdir.check_readable_npz(path)
        RoundState.load(path)

    @classmethod
    def load(cls, path: str, pool_size: int | None = None) -> "RoundState":
        """The state at ``path``, or an empty one when there is none.

        Raises:
          tfkd.errors.WorkdirError: a state that reads back but does not hold together (lengths
            that do not add up to the indices or images stored, an index chosen twice or outside
            the pool, a negative length), or one of another ``pool_size`` than asked (the
            fingerprint should prevent it). :func:`tfkd.workdir.check` sets such a file aside.
        """
        if not fs.exists(path):
            return cls(pool_size or 0, [], [], [])
        with fs.load_npz(path) as f:
            stored, lengths, flat, images = (int(f["pool_size"]), f["lengths"], f["indices"],
                                             f["images"])
            selections = ([str(s) for s in f["selections"]] if "selections" in f.files
                          else ["stored"] * len(lengths))
        problem = cls._inconsistency(stored, lengths, flat, images, selections)
        if problem is None and pool_size is not None and stored != pool_size:
            problem = f"rounds chosen from a pool of {stored} images, expected {pool_size}"
        if problem is not None:
            raise errors.WorkdirError(f"{path}: active rounds state {problem}")
        cuts = np.cumsum(lengths)[:-1]
        return cls(stored, [a.astype(np.int64) for a in np.split(flat, cuts)],
                   list(np.split(images, cuts)), selections)

    @staticmethod
    def _inconsistency(pool_size, lengths, flat, images, selections) -> str | None:
        """What makes a stored state unusable, in words, or None."""
        if lengths.ndim != 1 or (lengths < 0).any():
            return f"has round lengths {lengths.tolist()}; expected one count >= 0 per round"
        if not int(lengths.sum()) == len(flat) == len(images):
            return (f"has round lengths adding up to {int(lengths.sum())}, {len(flat)} indices "
                    f"and {len(images)} images; expected the same count")
        if len(selections) != len(lengths):
            return f"names {len(selections)} selections for {len(lengths)} rounds"
        if len(flat) and (flat.min() < 0 or flat.max() >= pool_size):
            return (f"has indices in [{flat.min()}, {flat.max()}]; expected [0, {pool_size}) "
                    "(the pool's)")
        if len(np.unique(flat)) != len(flat):
            return "chooses an image twice"
        return None

    @property
    def labelled(self) -> np.ndarray:
        """Every pool index chosen so far, sorted int64."""
        return np.sort(np.concatenate(self.chosen)) if self.chosen else np.zeros(0, np.int64)


def new_images(total: int, chosen: int) -> int:
    """Pool images still to buy when ``chosen`` are in stored rounds (or answered by the ledger)
    and ``total`` are to be labelled: ``max(0, total - chosen)``."""
    return max(0, total - chosen)


def recover_answered(state: RoundState, pool: np.ndarray,
                     answered: Callable[[np.ndarray], np.ndarray] | None) -> int:
    """Appends to ``state`` a round of selection ``ledger``: the pool images ``answered(pool)``
    (bool [P]: the ledger has the teacher's answer) says are paid for and no stored round holds.
    Returns how many (0: nothing appended)."""
    if answered is None:
        return 0
    paid = np.setdiff1d(np.flatnonzero(np.asarray(answered(pool), bool)), state.labelled)
    if len(paid):
        state.append(paid, pool[paid], "ledger")
    return len(paid)


def run_rounds(pool: np.ndarray, known_images: np.ndarray, known_targets: np.ndarray,
               total: int, config: ActiveConfig, state_path: str, seed: int,
               label: Callable[[np.ndarray, int], np.ndarray],
               train_proxy: Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]],
               answered: Callable[[np.ndarray], np.ndarray] | None = None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Labels ``total`` images of ``pool`` in rounds (module docstring), after every image already
    paid for: the stored rounds first (``resumed``), then the ledger's other answers of pool images
    (one round, ``ledger``), then the images still to buy (:func:`new_images`) in what is left of
    ``config.rounds`` (at least one round, none empty).

    Args:
      pool: float32 [P, H, W, C] in [0, 1], the synthetic images to choose from.
      known_images, known_targets: float32 [n, H, W, C] and [n, K]: what is labelled before the
        rounds (the real images and their soft labels); the proxy learns from them too.
      total: pool images to label, at most P (more are labelled when more were paid for).
      state_path: where the rounds' choices are persisted (:class:`RoundState`).
      label: ``label(images [q, H, W, C], round number)`` -> soft labels float32 [q, K]: the
        teacher (its ledger answers what an earlier process already paid for).
      train_proxy: ``train_proxy(images, targets)`` -> ``probabilities(images) -> float [m, K]``.
      answered: ``answered(images [m, H, W, C])`` -> bool [m], the images the teacher's ledger
        answers (None: none are looked for).

    Returns:
      (chosen pool indices int64 [L], their images float32 [L, H, W, C] and soft labels float32
      [L, K], in the order chosen, L >= ``total`` when the pool holds them; one record per round:
      ``round``, ``selection``, ``images``, ``labelled`` (after it), ``resumed``).

    Raises:
      tfkd.errors.WorkdirError: an unusable state; what ``label`` raises (QueryBudgetExceeded,
      TeacherError); ValueError: ``total`` outside [0, P] (the caller's bug: the FS-BBT method
      runs rounds only for fewer ``active.labelled_images`` than the pool holds).
    """
    if not 0 <= total <= len(pool):
        raise ValueError(  # Programming error: FSBBT.active() keeps total below the pool's size.
            f"total={total}: expected at most the pool's {len(pool)} images")
    state = RoundState.load(state_path, len(pool))
    stored = len(state.chosen)  # Rounds read back: resumed.
    if recover_answered(state, pool, answered):
        state.save(state_path)
    to_buy = new_images(total, len(state.labelled))
    paid = len(state.chosen)
    new_quotas = quotas(to_buy, min(to_buy, max(1, config.rounds - paid))) if to_buy else []
    images, targets, records = known_images, known_targets, []
    for r in range(paid + len(new_quotas)):
        if r >= paid:
            state.append(*_choose_round(pool, state, new_quotas[r - paid], r, config, seed,
                                        lambda: train_proxy(images, targets)))
            state.save(state_path)  # Before any of the round's images is sent.
        answers = label(state.images[r], r + 1)
        images = np.concatenate([images, state.images[r]])
        targets = np.concatenate([targets, answers])
        records.append({"round": r + 1, "selection": state.selections[r],
                        "images": len(state.chosen[r]), "labelled": len(images) - len(known_images),
                        "resumed": r < stored})
        logging.info("Active round %d/%d: %d images (%s%s)", r + 1, paid + len(new_quotas),
                     len(state.chosen[r]), state.selections[r],
                     ", choice read back" if r < stored else "")
    n = len(known_images)
    return np.concatenate(state.chosen), images[n:], targets[n:], records


def _choose_round(pool: np.ndarray, state: RoundState, quota: int, r: int, config: ActiveConfig,
                  seed: int, proxy: Callable[[], Callable[[np.ndarray], np.ndarray]]):
    """Round ``r``'s (pool indices, images, selection): a uniform draw in the first round, else
    ``config.selection`` scored by ``proxy()`` (trained on what is labelled so far)."""
    unlabelled = np.setdiff1d(np.arange(len(pool)), state.labelled)
    selection = "random" if r == 0 else config.selection
    probabilities = proxy()(pool[unlabelled]) if selection == "margin" else None
    rng = np.random.default_rng([seed, 2020, r])  # Per round: a resume draws the same.
    chosen = choose(quota, unlabelled, config, rng, probabilities)
    return chosen, pool[chosen], selection
