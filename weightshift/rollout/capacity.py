"""GPU capacity that follows the rollout: how many replicas each colour runs at a stage.

Two full inference stacks double the GPU bill for the whole rollout. Instead:

- **The stable colour keeps its full size** (its configured ``replicas``) until ``rollout
  finish``, so a rollback can always send it all traffic at once.
- **The candidate runs for its share.** At a stage where it serves (or is mirrored) ``s`` %
  of requests it runs ``ceil(s/100 * load * (1 + headroom))`` replicas, where ``load`` is the
  colour's full replica count (``proportional``: the stable colour is sized for the peak,
  so its count is the load) or ``peakRequestsPerSecond / replicaRequestsPerSecond``
  (``throughput``); never fewer than ``floor`` and never more than its full size. Blue-green's
  standby is full size at every stage: its switch is instant, so it must already carry all.
- **After ``rollout finish``** the old stable colour (now the candidate slot, at stage 0,
  still running its version) is held at ``holdReplicas`` (default: full) until
  ``weightshift rollout release`` (refused before the hold's time is up; a scheduled CI job
  runs it) scales it to zero, and the Cluster Autoscaler releases its nodes. A strategy
  whose last stage does not serve the candidate every request (shadow only mirrors) never
  finishes, so nothing is held after it (:func:`finishes`).
- **Whole nodes.** A node serves one colour and a colour's pods pack onto shared nodes
  (``colour_packing`` in ``components/inference_stack.py``), so the candidate is sized in
  whole nodes, and the GPU-hours are counted in nodes and never below the node groups'
  minimum size.

Order inside one ``pulumi up`` (``capacity_first``): going up a stage the listener depends on
the candidate's Deployment, so the new replicas are ready before weight moves to them;
going down (stage 0: abort, ack, finish) or while a rollback record holds traffic on the
stable colour, the candidate's Deployment depends on the listener, so weight leaves before
capacity does. Promotion moves exactly one stage forward and every other legal move goes to
stage 0, so the configured stage tells the direction.

A rollback record keeps the candidate's capacity at the configured stage's (the program
renders stage 0's weights, never its replicas), so the pods stay for the investigation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from weightshift.config import CapacityConfig, StackConfig
from weightshift.stages import Colour, Stage, Strategy, schedule, stage_of


@dataclass(frozen=True)
class Nodes:
    """The GPU nodes inference pods run on, as far as config knows them."""

    per_node: int
    """Replicas one node holds (its GPUs over a replica's); 1 where unknown."""
    gpus_per_node: int
    min_nodes: int
    """The GPU node groups' minimum size together: the autoscaler never goes below it."""

    def count(self, replicas: int) -> int:
        """Nodes ``replicas`` of one colour occupy (a node serves one colour)."""
        return math.ceil(replicas / self.per_node)


def nodes(config: StackConfig) -> Nodes:
    gpus = config.serving.gpus_per_replica
    groups = config.cluster.gpu_node_groups if config.cluster.existing is None else ()
    if not groups:
        return Nodes(per_node=1, gpus_per_node=gpus, min_nodes=0)
    smallest = min(group.gpus_per_node for group in groups)
    return Nodes(
        per_node=max(1, smallest // gpus),
        gpus_per_node=smallest,
        min_nodes=sum(group.min_size for group in groups),
    )


def candidate_replicas(
    strategy: Strategy, stage: Stage, full: int, settings: CapacityConfig, per_node: int = 1
) -> int:
    """The candidate's replicas at ``stage``, given its full size ``full``, rounded up to
    whole nodes of ``per_node`` replicas (a node's GPUs are paid for whether used or not,
    and the spare replica keeps serving when one fails)."""
    if full == 0:
        return 0
    if strategy is Strategy.BLUE_GREEN:
        return full
    share = (stage.served_percent + stage.mirror_percent) / 100.0
    load = settings.peak_replicas or float(full)
    # Rounded to 9 digits first: 0.25 * 6 * 1.25 must be 1.875, not 1.8750000000000002.
    needed = max(
        settings.floor, math.ceil(round(share * load * (1 + settings.headroom_percent / 100), 9))
    )
    return min(full, math.ceil(needed / per_node) * per_node)


def finishes(strategy: Strategy) -> bool:
    """Whether ``rollout finish`` can follow ``strategy``'s last stage: only where that stage
    serves the candidate every request (``rollout finish`` refuses shadow, which mirrors)."""
    return schedule(strategy)[-1].served_percent >= 100.0


def held(config: StackConfig) -> bool:
    """Whether the candidate colour is the old stable one ``rollout finish`` left warm."""
    rollout = config.rollout
    return (
        rollout.hold is not None
        and rollout.stage == 0
        and config.colour(rollout.candidate).version == rollout.hold.version
    )


def hold_size(config: StackConfig, colour: Colour) -> int:
    """The replicas ``colour`` is held at after a finish: ``holdReplicas``, at most full."""
    full = config.colour(colour).replicas
    size = config.rollout.capacity.hold_replicas
    return full if size is None else min(full, size)


def replicas(config: StackConfig, colour: Colour) -> int:
    """What ``colour`` runs with this config. A pure function of config: the hold ends when
    ``weightshift rollout release`` sets ``rollout.hold.released``, never by the clock, so a
    preview and the update after it, and every synthesis of one config, agree."""
    rollout = config.rollout
    full = config.colour(colour).replicas
    if colour is rollout.stable:
        return full
    if held(config):
        assert rollout.hold is not None
        return 0 if rollout.hold.released else hold_size(config, colour)
    # The mirrored share counts: the candidate answers every copy (shadow, and a canary's
    # rollout.shadowSample), though nobody reads the answer.
    stage = stage_of(rollout.strategy, rollout.stage, rollout.mirror_percent, rollout.mirror_sample)
    return candidate_replicas(
        rollout.strategy, stage, full, rollout.capacity, nodes(config).per_node
    )


def capacity_first(config: StackConfig, rolled_back: bool) -> bool:
    """True: the listener waits for the candidate's Deployment (going up a stage). False:
    the candidate's Deployment waits for the listener (stage 0, or rolled back)."""
    return config.rollout.stage > 0 and not rolled_back


@dataclass(frozen=True)
class GpuHours:
    """GPU-hours paid for beyond the stable colour's own, over the stages' bake times and the
    hold after ``finish``: with capacity following the rollout, and with a static pair
    (the candidate at full size throughout, the old stable kept at full size). Counted in
    whole GPU nodes (a node serves one colour; a node's GPUs are paid for whether its pods
    use them or not), and never below the node groups' minimum size."""

    rollout: float
    static_pair: float
    hours: float
    """Bake time of all stages plus the hold (stages without a bake time count 0 hours)."""
    hold: float
    """Of ``rollout``: the hold after ``finish`` (0 for a strategy that never finishes)."""

    @property
    def ratio(self) -> float | None:
        return self.rollout / self.static_pair if self.static_pair else None

    def to_json(self) -> dict[str, float | None]:
        return {
            "rollout": round(self.rollout, 1),
            "staticPair": round(self.static_pair, 1),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "hours": round(self.hours, 1),
            "hold": round(self.hold, 1),
        }


def extra_gpu_hours(config: StackConfig, candidate_by_stage: dict[int, int]) -> GpuHours:
    """From the candidate's replicas at each stage (as synthesized), the extra GPU-hours."""
    rollout = config.rollout
    pool = nodes(config)
    stable_nodes = pool.count(config.colour(rollout.stable).replicas)

    def extra(other_replicas: int, base: int = stable_nodes) -> float:
        """GPUs beyond ``base`` nodes when the other colour runs ``other_replicas``."""
        total = max(pool.min_nodes, base + pool.count(other_replicas))
        return (total - base) * pool.gpus_per_node

    full = config.colour(rollout.candidate).replicas
    spent = static = hours = 0.0
    for stage in schedule(rollout.strategy, rollout.mirror_percent, rollout.mirror_sample):
        bake = stage.duration.total_seconds() / 3600 if stage.duration else 0.0
        hours += bake
        spent += extra(candidate_by_stage.get(stage.index, 0)) * bake
        static += extra(full) * bake
    # After finish the candidate (full at the last stage) is stable, and the old stable
    # colour is the extra: held, then released; a static pair keeps it at full size. A
    # strategy that never finishes holds nothing.
    new_stable = pool.count(full)
    hold_hours = rollout.capacity.hold_hours if finishes(rollout.strategy) else 0.0
    hold = extra(hold_size(config, rollout.stable), new_stable) * hold_hours
    old_full = config.colour(rollout.stable).replicas
    return GpuHours(
        rollout=spent + hold,
        static_pair=static + extra(old_full, new_stable) * hold_hours,
        hours=hours + hold_hours,
        hold=hold,
    )
