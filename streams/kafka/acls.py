"""What each clsmon process may do on a locked-down cluster: Kafka ACLs per role, for a prefix.

A cluster with an authorizer (``allow.everyone.if.no.acl.found=false``) lets a principal do only
what an ACL allows. :func:`required_acls` lists, per role, the resources and operations in
Kafka's words (``kafka-acls.sh``); :func:`kafka_acls_commands` prints them as commands. The
security test grants exactly these to one SCRAM user per role and runs each process as that
user, so the list is what the code needs, neither more nor less (README, "Locked-down
cluster").

Roles: ``worker`` (``clsmon worker``), ``notifier`` (``clsmon notify``), ``board``
(``clsmon board``), ``oncall`` (``clsmon alerts``, ``clsmon ack``), ``gateway`` (whatever
publishes inputs: a HL7/FHIR gateway, ``clsmon simulate``). Every role may DESCRIBE the topics
under the prefix: the processes check that the contract's topics exist before they start (and
create missing ones only where the principal may; an administrator creates them on a
locked-down cluster).
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.kafka.topics import TopicNames

ROLES = ("worker", "notifier", "board", "oncall", "gateway")


@dataclass(frozen=True, slots=True)
class Grant:
    """Allow ``operations`` on one resource: ``resource`` is ``topic`` or ``group``;
    ``pattern`` ``literal`` (this name) or ``prefixed`` (every name starting with it)."""

    resource: str
    name: str
    operations: tuple[str, ...]
    pattern: str = "literal"


def app_prefix(prefix: str) -> str:
    """``clsmon.`` -> ``clsmon``: the Faust app ids are ``<this>-worker``, ``<this>-notifier``."""
    return prefix.rstrip(".-_") or "clsmon"


def required_acls(prefix: str = "clsmon.") -> dict[str, list[Grant]]:
    """The ACLs of each role (``ROLES``) for the topics under ``prefix``."""
    t = TopicNames(prefix)
    app = app_prefix(prefix)
    describe_all = Grant("topic", prefix, ("DESCRIBE",), "prefixed")

    def faust_app(name: str, reads: tuple[str, ...], writes: tuple[str, ...]) -> list[Grant]:
        return [
            describe_all,
            *(Grant("topic", topic, ("READ",)) for topic in reads),
            *(Grant("topic", topic, ("WRITE",)) for topic in writes),
            # the table's changelog and Faust's leader topic, created by the app itself
            Grant("topic", f"{app}-{name}-", ("CREATE", "DESCRIBE", "READ", "WRITE"),
                  "prefixed"),
            Grant("group", f"{app}-{name}", ("READ",)),
        ]

    return {
        # the worker also writes its inputs: a record on another partition than its key's
        # (a producer with another partitioner) is forwarded to the right one
        "worker": faust_app("worker", (*t.inputs, t.ticks),
                            (*t.inputs, t.alerts, t.dead_letters, t.ticks, t.patient_phase)),
        "notifier": faust_app("notifier", (t.alerts, t.alert_acks),
                              (t.dead_letters, t.notifications)),
        # reads without a consumer group; acknowledges and escalates on alert-acks
        "board": [describe_all, *(Grant("topic", topic, ("READ",)) for topic in (
            t.alerts, t.patient_phase, t.notifications, t.vitals, t.labs)),
                  Grant("topic", t.alert_acks, ("READ", "WRITE"))],
        "oncall": [describe_all, Grant("topic", t.alerts, ("READ",)),
                   Grant("topic", t.alert_acks, ("READ", "WRITE"))],
        "gateway": [describe_all, *(Grant("topic", topic, ("WRITE",)) for topic in t.inputs)],
    }


def kafka_acls_commands(principals: dict[str, str], prefix: str = "clsmon.",
                        bootstrap: str = "BROKER:9093",
                        config: str = "admin.properties") -> list[str]:
    """``kafka-acls.sh`` command lines granting ``required_acls(prefix)`` to the principal of
    each role (``{"worker": "User:clsmon-worker", ...}``)."""
    lines = []
    for role, grants in required_acls(prefix).items():
        principal = principals.get(role)
        if principal is None:
            continue
        for grant in grants:
            ops = " ".join(f"--operation {op.title()}" for op in grant.operations)
            pattern = " --resource-pattern-type prefixed" if grant.pattern == "prefixed" else ""
            lines.append(f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config "
                         f"{config} --add --allow-principal {principal} {ops} "
                         f"--{grant.resource} {grant.name}{pattern}")
    return lines
