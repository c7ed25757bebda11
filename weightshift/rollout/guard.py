"""What must still hold when weight moves to the candidate, hours after the program started.

Going up a stage, ``pulumi up`` waits for the candidate's pods before it updates the
listener, up to the stage's rollout budget. What the program checked at start may have
changed meanwhile. Just before the listener's new weights reach the engine
(``Traffic.listen(check=...)``), ``before_weight_moves`` checks again, and any finding stops
the update with the listener as it is:

- a rollback record for this candidate (the rollback function, or ``rollout abort``, acted
  during the wait: moving weight now would undo it, and its composite alarm, still in
  ALARM, would never act again);
- the candidate's rollback alarm already in ALARM while its actions are still off (turning
  them on now would never act: CloudWatch acts on changes of state);
- a target of the candidate's target group that is not healthy (a pod whose readiness gate
  was not injected counts as ready before its target is).

After the listener's update, ``after_weight_moved`` reads the record once more: a rollback
that landed in the seconds between the check and the update was overwritten by it, and
the update fails saying how to restore the rollback's weights.

Offline (``weightshift synth``) and in ``pulumi preview`` nothing here calls AWS beyond the
rollback record (a preview changes nothing, and the pods of a preview's stage are not up).
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from weightshift.rollout import record
from weightshift.rollout.record import OFFLINE_RECORD, RecordError, RollbackRecord

HEALTHY = "healthy"
DRAINING = "draining"


class GuardError(Exception):
    """Weight must not move to the candidate; the message says why and what to do."""


def before_weight_moves(
    *,
    parameter: str,
    candidate_version: str,
    colour: str,
    alarm_name: str,
    target_group_arn: str,
    region: str,
    dry_run: bool,
) -> None:
    """Raise ``GuardError`` when moving weight to the candidate now would be wrong."""
    found = _rollback_of(parameter, candidate_version, region)
    if found is not None:
        raise GuardError(
            f"{found.summary()}. The record ({parameter}) was written while this update waited "
            f"for {colour}'s pods, so the listener keeps the weights the rollback left (the "
            "stable colour serves 100 %) and this update stops here. Review the incident "
            "(`weightshift rollout status`), then `weightshift rollout ack` before promoting "
            "again."
        )
    if dry_run or OFFLINE_RECORD.get() is not None:
        return
    try:
        silent = record.silent_activation(alarm_name, region=region)
    except RecordError as error:
        raise GuardError(str(error)) from None
    if silent is not None:
        raise GuardError(silent)
    unhealthy = unhealthy_targets(target_group_arn, region=region)
    if unhealthy is not None:
        raise GuardError(
            f"{colour}'s pods are ready but its target group is not: {unhealthy}. The listener "
            "keeps its weights and this update stops here; check the load balancer "
            "controller and the pods' readiness gates (`kubectl get pods -o wide`), then run "
            "`pulumi up` again."
        )


def after_weight_moved(parameter: str, candidate_version: str, region: str) -> None:
    """Raise ``GuardError`` when a rollback landed while the listener was being updated."""
    found = _rollback_of(parameter, candidate_version, region)
    if found is not None:
        raise GuardError(
            f"{found.summary()}. The rollback landed while this update changed the listener, "
            "so the listener may now carry this update's weights instead of the rollback's. "
            "Run `weightshift rollout abort --reason 'rollback overwritten by pulumi up'` now: "
            "it puts all traffic back on the stable colour."
        )


def _rollback_of(parameter: str, candidate_version: str, region: str) -> RollbackRecord | None:
    """The rollback record, if it names this candidate."""
    try:
        found = record.read(parameter, region=region)
    except RecordError as error:
        raise GuardError(str(error)) from None
    return found if found is not None and found.candidate == candidate_version else None


def unhealthy_targets(
    target_group_arn: str, client: Any = None, region: str | None = None
) -> str | None:
    """What is wrong with the target group's targets, or None when at least one is healthy
    and every other one is healthy or draining (the pods a rolling update replaced leave
    through ``draining`` for the deregistration delay)."""
    elbv2 = client or boto3.client("elbv2", region_name=region)
    try:
        found = elbv2.describe_target_health(TargetGroupArn=target_group_arn)
    except (ClientError, BotoCoreError) as error:
        raise GuardError(
            f"cannot read the health of {target_group_arn} ({error}): the program must know the "
            "candidate's targets are healthy before it sends them traffic. Nothing was changed."
        ) from None
    states: dict[str, int] = {}
    for target in found.get("TargetHealthDescriptions", []):
        state = target.get("TargetHealth", {}).get("State", "unknown")
        states[state] = states.get(state, 0) + 1
    if not states.get(HEALTHY):
        return "no target is healthy" + (f" ({_count(states)})" if states else "")
    if set(states) <= {HEALTHY, DRAINING}:
        return None
    return _count(states)


def _count(states: dict[str, int]) -> str:
    return ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
