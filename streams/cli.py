"""``clsmon`` command line: one entry point, one sub-command per job.

Every option has an environment variable (shown in ``--help``) so the same settings work in a
shell, a Makefile, a container and docker-compose. Errors a user can fix are reported in one line
on stderr with exit code 2; nothing prints a traceback for a bad file or flag.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:  # never at run time: main chooses the engine before detectors is imported
    from detectors.config import Thresholds

DEFAULT_BROKER = "kafka://127.0.0.1:9092"


def version() -> str:
    """The installed distribution's version (``pyproject.toml``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("clsmon")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


@overload
def _env(name: str) -> str | None: ...
@overload
def _env(name: str, default: str) -> str: ...
def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose unknown flags are reported by the sub-command that was given them:
    its own usage and ``clsmon replay: error: unrecognized arguments: --bogus``, exit 2.

    Plain argparse collects a sub-command's unknown arguments and reports them from the
    top-level parser, whose usage (``clsmon [-h] [--version] COMMAND ...``) says nothing of the
    flags the user got wrong. Sub-commands (``sub.add_parser``) are of this class too.
    """

    _PARSED_BY = "_clsmon_parsed_by"

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = super().parse_known_args(args, namespace)
        # a sub-command returns before its parent does: the first mark is the innermost parser
        vars(namespace).setdefault(self._PARSED_BY, self)
        return namespace, extras

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = self.parse_known_args(args, namespace)
        parser = vars(namespace).pop(self._PARSED_BY, self)
        if extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace


def load_thresholds(path: str | None) -> Thresholds:
    """``detectors.config.load_thresholds``, imported only once ``main`` has chosen the engine
    (``streams.ops.engine``): nothing in this module imports ``detectors`` when it loads."""
    from detectors.config import load_thresholds as load

    return load(path)


def _add_thresholds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--thresholds", metavar="FILE", default=_env("CLSMON_THRESHOLDS"),
                   help="TOML file overriding clinical thresholds (env CLSMON_THRESHOLDS; "
                        "default: the values of docs/clinical-criteria.md)")


def _cmd_replay(args: argparse.Namespace) -> int:
    from streams.offline.replay import run_replay
    from streams.ops.engine import label as engine_label

    return run_replay(args.observations, patients=args.patients, out=args.out,
                      rejects=args.rejects, sort=args.sort, plots=args.plots,
                      thresholds=load_thresholds(args.thresholds), quiet=args.quiet,
                      interventions=args.interventions, engine=engine_label())


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from streams.offline.evaluate import run_evaluate

    return run_evaluate(args.observations, truth=args.truth, patients=args.patients,
                        report=args.report, plots=args.plots,
                        thresholds=load_thresholds(args.thresholds),
                        interventions=args.interventions, review=args.review)


def _cmd_import(args: argparse.Namespace) -> int:
    from streams.offline.mimic3 import run_import

    return run_import(args.directory, args.out, items=args.items, quiet=args.quiet)


def _add_import_parser(sub: Any) -> None:
    p = sub.add_parser("import", help="convert a clinical database into replay files",
                       description="Convert a clinical database into the replay's files.")
    sources = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    m = sources.add_parser(
        "mimic3", help="MIMIC-III (PhysioNet layout, the demo included)",
        description="Read a MIMIC-III directory (UPPERCASE tables, .csv or .csv.gz) and write "
                    "OUTDIR/observations.csv, patients.csv (one row per admission, with admit "
                    "and discharge times) and interventions.csv, ready for clsmon replay. "
                    "Times: MIMIC-III's shifted local wall-clock times are written unchanged "
                    "as UTC ('Z'); intervals within a patient are exact, no real instant is "
                    "implied. Item ids map through a data file (streams/offline/data/"
                    "mimic3_items.csv); every row left out or refused is counted with its "
                    "reason in the summary.")
    m.add_argument("directory", metavar="DIR", help="the MIMIC-III tables")
    m.add_argument("--out", metavar="OUTDIR", required=True, help="where the files go")
    m.add_argument("--items", metavar="FILE",
                   help="item mapping (default: the one shipped with clsmon)")
    m.add_argument("--quiet", action="store_true", help="no summary, no progress")
    m.set_defaults(func=_cmd_import, command="import mimic3")


def _cohort(args: argparse.Namespace) -> list[Any]:
    import json

    from streams.offline.simulator import cohort

    return cohort(args.patients, seed=args.seed, hours=args.hours,
                  mix=json.loads(args.mix) if args.mix else None,
                  vitals_every_min=args.vitals_every_min, missing=args.missing,
                  labs_missing=args.labs_missing)


def _add_topic_prefix(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic-prefix", default=_env("CLSMON_TOPIC_PREFIX", "clsmon."),
                   help="prefix of every topic name (env CLSMON_TOPIC_PREFIX, default clsmon.)")


def add_kafka_options(p: argparse.ArgumentParser, broker: bool = True) -> None:
    """``--broker`` and the TLS/SASL options of every command that talks to Kafka; read them
    back with ``kafka_connection(args)``. The password is never a flag: it comes from
    ``CLSMON_SASL_PASSWORD`` or the file ``--sasl-password-file`` names."""
    from streams.kafka.connection import SASL_MECHANISMS, SECURITY_PROTOCOLS

    if broker:
        p.add_argument("--broker", default=_env("CLSMON_BROKER", DEFAULT_BROKER),
                       metavar="HOST:PORT",
                       help=f"bootstrap servers, HOST:PORT or kafka://HOST:PORT, comma-separated "
                            f"(env CLSMON_BROKER, default {DEFAULT_BROKER}); TLS and SASL come "
                            "from --security-protocol, never from the address")
    g = p.add_argument_group("Kafka security (TLS and SASL)")
    g.add_argument("--security-protocol", type=str.upper, choices=SECURITY_PROTOCOLS,
                   default=_env("CLSMON_SECURITY_PROTOCOL", "PLAINTEXT"),
                   help="Kafka's security.protocol (env CLSMON_SECURITY_PROTOCOL, default "
                        "PLAINTEXT)")
    g.add_argument("--sasl-mechanism", type=str.upper, choices=SASL_MECHANISMS,
                   default=_env("CLSMON_SASL_MECHANISM"),
                   help="with SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (env "
                        "CLSMON_SASL_MECHANISM, default PLAIN)")
    g.add_argument("--sasl-username", metavar="USER", default=_env("CLSMON_SASL_USERNAME"),
                   help="SASL user (env CLSMON_SASL_USERNAME)")
    g.add_argument("--sasl-password-file", metavar="FILE",
                   default=_env("CLSMON_SASL_PASSWORD_FILE"),
                   help="file holding the SASL password (env CLSMON_SASL_PASSWORD_FILE); or "
                        "put the password itself in env CLSMON_SASL_PASSWORD")
    g.add_argument("--ssl-cafile", metavar="PEM", default=_env("CLSMON_SSL_CAFILE"),
                   help="CA certificate(s) that signed the brokers' certificates (env "
                        "CLSMON_SSL_CAFILE; default: the system's CAs)")
    g.add_argument("--ssl-certfile", metavar="PEM", default=_env("CLSMON_SSL_CERTFILE"),
                   help="client certificate for mutual TLS (env CLSMON_SSL_CERTFILE)")
    g.add_argument("--ssl-keyfile", metavar="PEM", default=_env("CLSMON_SSL_KEYFILE"),
                   help="its private key (env CLSMON_SSL_KEYFILE; an encrypted key's password "
                        "in env CLSMON_SSL_KEY_PASSWORD)")


def kafka_connection(args: argparse.Namespace) -> Any:
    """The ``KafkaConnection`` (``streams.kafka.connection``) the options of
    ``add_kafka_options`` describe.

    Raises:
        KafkaConfigError: an unknown scheme in --broker, a SASL protocol without a user or
            password, TLS files without TLS, a file that does not exist.
    """
    from streams.kafka.connection import KafkaConfigError, KafkaConnection, KafkaSecurity

    password = _env("CLSMON_SASL_PASSWORD")
    if args.sasl_password_file:
        try:
            password = Path(args.sasl_password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise KafkaConfigError(f"cannot read the SASL password file "
                                   f"{args.sasl_password_file}: {exc.strerror}") from exc
    security = KafkaSecurity(
        protocol=args.security_protocol, sasl_mechanism=args.sasl_mechanism,
        username=args.sasl_username, password=password, cafile=args.ssl_cafile,
        certfile=args.ssl_certfile, keyfile=args.ssl_keyfile,
        key_password=_env("CLSMON_SSL_KEY_PASSWORD"))
    return KafkaConnection.of(args.broker, security)


def _add_consumer_options(p: argparse.ArgumentParser) -> None:
    """The consumer settings the worker and the notifier share (see streams/kafka/consumer.py)."""
    p.add_argument("--stall-after", type=float, default=_env("CLSMON_STALL_AFTER", "5"),
                   help="re-read a partition whose fetched messages have not reached the agent "
                        "for this many seconds (env CLSMON_STALL_AFTER, default 5; see "
                        "streams/kafka/consumer.py)")
    p.add_argument("--session-timeout", type=float, default=6.0,
                   help="consumer group session timeout in seconds (default 6)")
    p.add_argument("--stop-timeout", type=float,
                   default=float(_env("CLSMON_STOP_TIMEOUT", "20")),
                   help="after SIGTERM or Ctrl-C, exit anyway once the stop has taken this many "
                        "seconds (a broker gone keeps the last commit waiting); what was not "
                        "committed comes again at the next start (env CLSMON_STOP_TIMEOUT, "
                        "default 20: within the 30 s Kubernetes and our docker-compose.yml wait "
                        "before SIGKILL)")


def _add_replication(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replication-factor", type=int,
                   default=int(_env("CLSMON_REPLICATION_FACTOR", "1") or 1),
                   help="replicas of the topics and changelogs this process creates (env "
                        "CLSMON_REPLICATION_FACTOR, default 1; 3 on a production cluster, "
                        "with min.insync.replicas 2)")


def _add_engine(p: argparse.ArgumentParser) -> None:
    from streams.kafka.engines import ENGINES, ENV_VAR, default_engine

    p.add_argument("--engine", choices=ENGINES, default=default_engine(),
                   help=f"kafka = Apache Kafka (Java 17+), tansu = the embedded broker, auto = "
                        f"Apache Kafka where Java 17+ is (env {ENV_VAR}, default auto)")


def _add_producer_batch(p: argparse.ArgumentParser) -> None:
    """The produce batch size of the worker and the notifier (their changelogs and outputs)."""
    p.add_argument("--producer-max-batch-size", type=int,
                   default=int(_env("CLSMON_PRODUCER_MAX_BATCH_SIZE", "0") or 0),
                   help="bytes per produce batch; 0 (default) = aiokafka's batching; 1 sends "
                        "records one by one, which the embedded Tansu broker needs for exact "
                        "table recovery (env CLSMON_PRODUCER_MAX_BATCH_SIZE)")


class PortInUseError(Exception):
    """A port this command must listen on is taken (the user's to fix: exit 2, one line)."""


def _web_port_free(args: argparse.Namespace, port_env: str) -> None:
    """Before Kafka is touched: a metrics port in use (a second worker on the default port, a
    worker beside the demo) is one line, not a traceback from the HTTP server."""
    from streams.kafka.local import port_in_use

    if args.web_port and port_in_use(args.web_port, args.web_host):
        raise PortInUseError(f"port {args.web_port} on {args.web_host} (/metrics) is in use: "
                             f"choose another with --web-port N (or {port_env}), or 0 for none")


def _add_web_options(p: argparse.ArgumentParser, port_env: str, port: int) -> None:
    """The HTTP server of a long-running process: /metrics, /healthz, /readyz."""
    p.add_argument("--web-port", type=int, default=int(_env(port_env, str(port)) or port),
                   help=f"port of /metrics, /healthz, /readyz; 0 = none "
                        f"(env {port_env}, default {port})")
    p.add_argument("--web-host", default=_env("CLSMON_METRICS_HOST", "127.0.0.1"),
                   help="address /metrics binds to (env CLSMON_METRICS_HOST, default 127.0.0.1;"
                        " 0.0.0.0 only where Prometheus must reach it, as in docker-compose)")


def _add_worker_options(p: argparse.ArgumentParser) -> None:
    add_kafka_options(p)
    _add_replication(p)
    _add_web_options(p, "CLSMON_METRICS_PORT", 6066)
    _add_topic_prefix(p)
    p.add_argument("--partitions", type=int, default=int(_env("CLSMON_PARTITIONS", "3")),
                   help="partitions of the topics and the state table (env CLSMON_PARTITIONS, "
                        "default 3); must match existing topics")
    p.add_argument("--data-dir", default=_env("CLSMON_DATA_DIR"),
                   help="Faust data directory, one per worker (env CLSMON_DATA_DIR, "
                        "default: a temporary directory)")
    p.add_argument("--store", default=_env("CLSMON_STORE", "memory://"),
                   help="Faust table store: memory:// (state rebuilt from the changelog at "
                        "start) or rocksdb:// (env CLSMON_STORE, default memory://)")
    p.add_argument("--fetch-wait-ms", type=int, default=100,
                   help="consumer fetch wait; sets latency when idle (default 100)")
    p.add_argument("--grace-ms", type=int, default=300,
                   help="how much later than its timestamp a producer's record may reach "
                        "the log; an input topic counts as silent for a message once the broker "
                        "showed it caught up this long after the message's time (default 300)")
    p.add_argument("--flush-idle-s", type=float, default=3.0,
                   help="take a waiting lab-panel decision once the patient has been quiet "
                        "this long (default 3)")
    _add_consumer_options(p)
    p.add_argument("--silent-after-min", type=float,
                   default=float(_env("CLSMON_SILENT_AFTER_MIN", "15")),
                   help="a bed without data for this many minutes counts in clsmon_beds_silent "
                        "(env CLSMON_SILENT_AFTER_MIN, default 15)")
    _add_producer_batch(p)
    p.add_argument("--loglevel", default=_env("CLSMON_LOGLEVEL", "WARNING"),
                   help="log level (env CLSMON_LOGLEVEL, default WARNING)")
    _add_thresholds(p)


def _worker_config(args: argparse.Namespace) -> Any:
    from streams.worker.config import WorkerConfig

    connection = kafka_connection(args)
    return WorkerConfig(
        broker=connection.url, security=connection.security,
        replication_factor=args.replication_factor, topic_prefix=args.topic_prefix,
        partitions=args.partitions, web_port=args.web_port, web_host=args.web_host,
        data_dir=args.data_dir, thresholds=args.thresholds, store=args.store,
        fetch_wait_ms=args.fetch_wait_ms, grace_ms=args.grace_ms,
        flush_idle_s=args.flush_idle_s,
        session_timeout_s=args.session_timeout, stall_after_s=args.stall_after,
        stop_timeout_s=args.stop_timeout,
        producer_max_batch_size=args.producer_max_batch_size, loglevel=args.loglevel,
        silent_after_s=args.silent_after_min * 60)


def _cmd_worker(args: argparse.Namespace) -> int:
    load_thresholds(args.thresholds)  # a bad file is reported before Kafka is touched
    _web_port_free(args, "CLSMON_METRICS_PORT")
    config = _worker_config(args)
    config.connection.check()  # an unreachable broker: one line within seconds
    from streams.worker.app import run

    return run(config)


def _cmd_broker(args: argparse.Namespace) -> int:
    from streams.kafka.engines import run_broker

    return run_broker(args.engine, args.port, args.nodes)


def _cmd_simulate(args: argparse.Namespace) -> int:
    if args.to:
        from streams.offline.simulator import simulate_to_file

        return simulate_to_file(args.to, _cohort(args))
    from streams.kafka.topics import TopicNames
    from streams.offline.publish import simulate_to_broker

    connection = kafka_connection(args)
    connection.check()  # before the cohort is made
    return simulate_to_broker(connection, TopicNames(args.topic_prefix),
                              args.partitions, _cohort(args), args.speed or None, args.quiet)


def _cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    load_thresholds(args.thresholds)
    return run_demo(args)


def _cmd_notify(args: argparse.Namespace) -> int:
    from streams.notify.routing import load_routing

    load_routing(args.config)  # a bad file is a one-line error, before Faust starts
    _web_port_free(args, "CLSMON_NOTIFY_METRICS_PORT")
    connection = kafka_connection(args)
    connection.check()
    from streams.notify.app import NotifyConfig, run

    return run(NotifyConfig(
        broker=connection.url, security=connection.security,
        replication_factor=args.replication_factor, topic_prefix=args.topic_prefix,
        partitions=args.partitions, config=args.config, escalate_after_s=args.escalate_after,
        escalate_high_after_s=args.escalate_high_after,
        escalation_check_s=args.escalation_check, web_port=args.web_port,
        web_host=args.web_host, data_dir=args.data_dir, store=args.store,
        fetch_wait_ms=args.fetch_wait_ms, session_timeout_s=args.session_timeout,
        stall_after_s=args.stall_after, stop_timeout_s=args.stop_timeout,
        producer_max_batch_size=args.producer_max_batch_size,
        commit_interval_s=args.commit_interval, loglevel=args.loglevel))


def _cmd_ack(args: argparse.Namespace) -> int:
    from streams.kafka.topics import TopicNames
    from streams.notify.oncall import ack_command

    return ack_command(kafka_connection(args), TopicNames(args.topic_prefix), args.alert_id,
                       args.by, args.note, args.patient)


def _cmd_alerts(args: argparse.Namespace) -> int:
    from streams.kafka.topics import TopicNames
    from streams.notify.oncall import show_alerts

    show_alerts(kafka_connection(args), TopicNames(args.topic_prefix), sys.stdout,
                follow=args.follow, patient=args.patient)
    return 0


def _add_notify_parsers(sub: Any) -> None:
    p = sub.add_parser("notify", help="run the notifier: alerts to clinicians' sinks, acks, "
                                      "escalation",
                       description="Deliver each alert once to the sinks its ward's route names "
                                   "(console, webhook, audit file), take acknowledgements from "
                                   "alert-acks, and escalate critical alerts nobody "
                                   "acknowledged. Serves /metrics, /healthz, /readyz.")
    add_kafka_options(p)
    _add_replication(p)
    p.add_argument("--config", default=_env("CLSMON_NOTIFY_CONFIG"), metavar="TOML",
                   help="routing: sinks per ward (env CLSMON_NOTIFY_CONFIG; default: console "
                        "only); see deploy/notify.example.toml")
    p.add_argument("--escalate-after", type=float, metavar="S",
                   default=float(_env("CLSMON_ESCALATE_AFTER", "0") or 0) or None,
                   help="seconds before an unacknowledged critical alert is escalated (env "
                        "CLSMON_ESCALATE_AFTER; default: the config's escalate_after_s, else "
                        "600)")
    p.add_argument("--escalate-high-after", type=float, metavar="S",
                   default=float(_env("CLSMON_ESCALATE_HIGH_AFTER", "0") or 0) or None,
                   help="seconds before an unacknowledged high alert is escalated (env "
                        "CLSMON_ESCALATE_HIGH_AFTER; default: the config's escalate_after_s "
                        "table, else never)")
    p.add_argument("--escalation-check", type=float, default=0.5, metavar="S",
                   help="how often due deliveries and deadlines are checked (default 0.5 s)")
    _add_web_options(p, "CLSMON_NOTIFY_METRICS_PORT", 6067)
    _add_topic_prefix(p)
    p.add_argument("--partitions", type=int, default=int(_env("CLSMON_PARTITIONS", "3")),
                   help="partitions of the topics (env CLSMON_PARTITIONS, default 3)")
    p.add_argument("--data-dir", default=_env("CLSMON_NOTIFY_DATA_DIR"),
                   help="Faust data directory (env CLSMON_NOTIFY_DATA_DIR, default: temporary)")
    p.add_argument("--store", default=_env("CLSMON_STORE", "memory://"),
                   help="table store (env CLSMON_STORE, default memory://)")
    p.add_argument("--fetch-wait-ms", type=int, default=100, help="consumer fetch wait")
    _add_consumer_options(p)
    _add_producer_batch(p)
    p.add_argument("--commit-interval", type=float, default=0.5,
                   help="seconds between offset commits (default 0.5)")
    p.add_argument("--loglevel", default=_env("CLSMON_LOGLEVEL", "WARNING"),
                   help="log level (env CLSMON_LOGLEVEL, default WARNING)")
    p.set_defaults(func=_cmd_notify)

    p = sub.add_parser("ack", help="acknowledge an alert (stops its escalation)",
                       description="Publish an acknowledgement {alert_id, by, at, note} to "
                                   "alert-acks, keyed by the alert's patient (looked up on the "
                                   "alerts topic). Exit code 1 when the alert does not exist or "
                                   "is already acknowledged (nothing is published).")
    p.add_argument("alert_id", metavar="ALERT_ID")
    p.add_argument("--by", required=True, metavar="NAME", help="who acknowledges")
    p.add_argument("--note", help="free text stored with the acknowledgement")
    p.add_argument("--patient", metavar="PID", help="the alert's patient_id (skips the lookup)")
    add_kafka_options(p)
    _add_topic_prefix(p)
    p.set_defaults(func=_cmd_ack)

    p = sub.add_parser("alerts", help="print alerts and their acknowledgements",
                       description="Print every alert once (coloured by phase on a terminal) "
                                   "with its acknowledgement; --follow keeps reading.")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new alerts")
    p.add_argument("--patient", metavar="PID", help="only this patient")
    add_kafka_options(p)
    _add_topic_prefix(p)
    p.set_defaults(func=_cmd_alerts)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clsmon",
        description="Watch ICU patients for capillary leak syndrome phases "
                    "(prodromal, leak, recovery). Alerts are advisory.",
        epilog="Environment: CLSMON_BROKER (broker URL), CLSMON_TOPIC_PREFIX (topic prefix), "
               "CLSMON_METRICS_PORT (worker /metrics port), CLSMON_STORE (Faust table store), "
               "CLSMON_THRESHOLDS (TOML thresholds file), CLSMON_NOTIFY_CONFIG (notification "
               "routing); see each command's --help.")
    parser.add_argument("--version", action="version", version=f"clsmon {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("replay", help="run recorded observations (CSV/Parquet) through the "
                                      "detectors and write alerts",
                       description="Replay long-format observations (patient_id, observed_at, "
                                   "kind, value, unit [, source, period_min, id, "
                                   "available_at]) in file (arrival) order through the "
                                   "detectors, reading the file in chunks (memory does not "
                                   "grow with it; --sort reads it whole).")
    p.add_argument("observations", help="CSV or Parquet file")
    p.add_argument("--patients", metavar="CONTEXT.csv",
                   help="patient context: patient_id, sex, weight_kg, birth_year; with admit "
                        "and discharge times (or event and at) each stay is applied at its "
                        "time, so a later admission is a new stay")
    p.add_argument("--interventions", metavar="FILE",
                   help="interventions (CSV/Parquet: patient_id, kind, started_at, ended_at, "
                        "amount, amount_unit, rate, rate_unit, ...), merged in arrival order")
    p.add_argument("--out", metavar="ALERTS", help="alerts as JSON lines (.jsonl) or CSV (.csv)")
    p.add_argument("--rejects", metavar="FILE", help="rejected rows with reasons (.jsonl/.csv)")
    p.add_argument("--sort", action="store_true",
                   help="sort by event time first (stable; reads the whole file into memory)")
    p.add_argument("--quiet", action="store_true", help="no summary, no progress")
    p.add_argument("--plots", metavar="DIR", help="write a timeline PNG per alerted patient")
    _add_thresholds(p)
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("evaluate", help="score the detectors against ground truth (report)",
                       description="Replay observations and score the alerts against ground-"
                                   "truth phase intervals (--truth: patient_id, phase, start, "
                                   "end, profile: sensitivity per episode and phase, delay, "
                                   "lead time, PPV, false alerts by confounder) and/or a "
                                   "clinician's review of real stays (--review); alerts per "
                                   "stay-day and per patient by phase. Writes DIR/report.html, "
                                   "metrics.json, episodes.csv (and review.csv).")
    p.add_argument("observations", help="CSV or Parquet file")
    p.add_argument("--truth", metavar="TRUTH.csv",
                   help="ground truth (clsmon simulate --to writes FILE.truth.csv)")
    p.add_argument("--review", metavar="REVIEW.csv",
                   help="a clinician's review of alert episodes (subject_id, phase, around, "
                        "verdict, reason): true episodes found within 6 h, false ones still "
                        "alerting within 12 h; times without an offset are read as UTC")
    p.add_argument("--patients", metavar="CONTEXT.csv",
                   help="patient context; admit/discharge times give the stay-days")
    p.add_argument("--interventions", metavar="FILE", help="interventions, as for replay")
    p.add_argument("--report", metavar="DIR", required=True, help="where the report goes")
    p.add_argument("--plots", action="store_true",
                   help="also a timeline per alerted patient in DIR/timelines")
    _add_thresholds(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("simulate", help="synthetic patients (CLS episodes and confounders)",
                       description="Generate a synthetic cohort. With --to, write it to a file "
                                   "(plus .patients.csv and .truth.csv beside it); with "
                                   "--broker, publish it to the patients, vitals and labs "
                                   "topics, paced by --speed.")
    p.add_argument("--patients", type=int, default=int(_env("CLSMON_SIM_PATIENTS", "20")),
                   help="cohort size (env CLSMON_SIM_PATIENTS, default 20)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--hours", type=float, default=168.0, help="hours per patient (default 168)")
    p.add_argument("--vitals-every-min", type=float, default=5.0,
                   help="minutes between vital sets; 0 = each patient its own (2, 5 or 15) "
                        "(default 5)")
    p.add_argument("--mix", metavar="JSON",
                   help='profile shares, e.g. \'{"scls": 0.5, "stable": 0.5}\' (default: a '
                        "third CLS, the rest confounders and stable patients)")
    p.add_argument("--missing", type=float, default=0.0,
                   help="share of vitals missing, with occasional monitor gaps (default 0)")
    p.add_argument("--labs-missing", type=float, default=0.0,
                   help="share of lab draws missing (default 0)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="FILE",
                       help="write observations to this CSV/Parquet file")
    where.add_argument("--broker", metavar="URL", nargs="?", const=_env("CLSMON_BROKER",
                                                                      DEFAULT_BROKER),
                       help="publish to the topics of this broker (kafka://HOST:PORT or "
                            "HOST:PORT; without a value: env CLSMON_BROKER, else "
                            f"{DEFAULT_BROKER})")
    p.add_argument("--speed", type=float, default=float(_env("CLSMON_SIM_SPEED", "3600")),
                   help="with --broker: simulated seconds per real second (3600 = one "
                        "simulated hour per second; 0 = as fast as possible; env "
                        "CLSMON_SIM_SPEED, default 3600)")
    _add_topic_prefix(p)
    p.add_argument("--partitions", type=int, default=3,
                   help="partitions of the topics if they must be created (default 3)")
    add_kafka_options(p, broker=False)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("broker", help="run a local broker (Apache Kafka or Tansu) in the "
                                      "foreground",
                       description="Run a broker on 127.0.0.1 until Ctrl-C or SIGTERM, for "
                                   "development and the demo: Apache Kafka (KRaft, from Maven "
                                   "Central jars fetched by Maven on first use into "
                                   "~/.cache/clsmon; needs Java 17+) or the embedded Tansu "
                                   "(in-memory). It prints its address when ready and dies "
                                   "with its parent process. Data is temporary.")
    _add_engine(p)
    p.add_argument("--port", type=int, default=9092,
                   help="client port on 127.0.0.1 (default 9092; node i of --nodes 3 listens "
                        "on PORT+i-1; 0 = free ports)")
    p.add_argument("--nodes", type=int, choices=(1, 3), default=1,
                   help="Apache Kafka nodes (KRaft, each broker and controller; default 1); "
                        "with 3 new topics get 3 replicas and min.insync.replicas 2")
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("worker", help="run the stream worker (Faust) against a Kafka broker",
                       description="Consume vitals, labs, patients and interventions; "
                                   "dead-letter bad input; detect CLS phases; publish alerts. "
                                   "Serves /metrics, /healthz "
                                   "and /readyz. Stops cleanly on SIGTERM or Ctrl-C.")
    _add_worker_options(p)
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("demo", help="broker, worker, notifier, board and simulated patients",
                       description="Start a local broker (Apache Kafka where Java 17+ is, else "
                                   "the embedded Tansu), a worker, the notifier, the ward "
                                   "board and the simulator; print alerts as they are raised "
                                   "and a summary when the cohort is done. Ctrl-C stops "
                                   "everything.")
    _add_engine(p)
    p.add_argument("--port", type=int, default=0,
                   help="broker port (default: a free one)")
    p.add_argument("--patients", type=int, default=int(_env("CLSMON_SIM_PATIENTS", "20")),
                   help="cohort size (env CLSMON_SIM_PATIENTS, default 20)")
    p.add_argument("--speed", type=float, default=float(_env("CLSMON_SIM_SPEED", "7200")),
                   help="simulated seconds per real second (env CLSMON_SIM_SPEED, default 7200)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--hours", type=float, default=168.0, help="hours per patient (default 168)")
    p.add_argument("--web-port", type=int,
                   default=int(_env("CLSMON_METRICS_PORT", "6066") or 6066),
                   help="worker metrics port (env CLSMON_METRICS_PORT, default 6066)")
    p.add_argument("--notify-port", type=int,
                   default=int(_env("CLSMON_NOTIFY_METRICS_PORT", "6067") or 6067),
                   help="notifier metrics port (env CLSMON_NOTIFY_METRICS_PORT, default 6067)")
    p.add_argument("--board-port", type=int,
                   default=int(_env("CLSMON_BOARD_PORT", "8080") or 8080),
                   help="the ward board's port (env CLSMON_BOARD_PORT, default 8080)")
    _add_thresholds(p)
    p.set_defaults(func=_cmd_demo)
    _add_notify_parsers(sub)
    _add_import_parser(sub)
    from streams.board.cli import add_parsers as add_board_parsers

    add_board_parsers(sub, _env, DEFAULT_BROKER)
    _add_interface_parsers(sub)
    add_kafka_options(sub.choices["board"])  # --broker, TLS and SASL, as every Kafka command
    return parser


#: a user's mistake with a path (a file where a folder is wanted, or the other way round) is
#: one line too, like a missing or unreadable file
_EXPECTED_ERRORS: tuple[type[Exception], ...] = (FileNotFoundError, PermissionError,
                                                 IsADirectoryError, NotADirectoryError,
                                                 FileExistsError, PortInUseError)


def _cmd_hl7_listen(args: argparse.Namespace) -> int:
    from streams.interfaces.hl7.listener import ListenerConfig, run
    from streams.kafka.topics import TopicNames

    _web_port_free(args, "CLSMON_HL7_METRICS_PORT")
    settings, _ = _interface_settings(args)
    for path in (args.tls_cert, args.tls_key, args.tls_client_ca):
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"TLS file not found: {path}")
    cfg = ListenerConfig(settings, TopicNames(args.topic_prefix), host=args.host, port=args.port,
                         max_bytes=args.max_bytes, idle_timeout_s=args.idle_timeout,
                         max_connections=args.max_connections,
                         produce_timeout_s=args.produce_timeout, tls_cert=args.tls_cert,
                         tls_key=args.tls_key, tls_client_ca=args.tls_client_ca)
    connection = kafka_connection(args)
    connection.check()
    return run(cfg, connection, partitions=args.partitions,
               idempotence=args.idempotence, web_port=args.web_port, web_host=args.web_host)


def _add_interface_parsers(sub: Any) -> None:
    """``clsmon hl7 listen`` and ``clsmon publish`` (streams/interfaces)."""
    hl7 = sub.add_parser("hl7", help="HL7 v2 interfaces (MLLP listener)",
                         description="HL7 v2 over MLLP: see clsmon hl7 listen --help.")
    hl7_sub = hl7.add_subparsers(dest="hl7_command", required=True, metavar="COMMAND")
    p = hl7_sub.add_parser(
        "listen", help="MLLP server: ORU^R01 and ADT to the input topics, ACK after Kafka",
        description="Receive HL7 v2 messages over MLLP (ORU^R01 results from monitor gateways "
                    "and the laboratory, ADT A01/A02/A03/A04/A08/A11/A13), publish them to "
                    "vitals, labs and patients, and acknowledge each (AA) only after Kafka "
                    "acknowledged its records; AE/AR with ERR segments, and the raw message "
                    "dead-lettered, for what cannot be used. Serves /metrics.")
    add_kafka_options(p)
    _add_topic_prefix(p)
    p.add_argument("--partitions", type=int, default=int(_env("CLSMON_PARTITIONS", "3")),
                   help="partitions of the topics if they must be created (default 3)")
    p.add_argument("--host", default=_env("CLSMON_HL7_HOST", "0.0.0.0"),
                   help="address to listen on (env CLSMON_HL7_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, default=int(_env("CLSMON_HL7_PORT", "2575")),
                   help="MLLP port (env CLSMON_HL7_PORT, default 2575, the IANA HL7 port)")
    _add_interface_options(p)
    p.add_argument("--max-bytes", type=int, default=int(_env("CLSMON_HL7_MAX_BYTES",
                                                             str(1 << 20))),
                   help="largest message; a larger block closes the connection (default 1 MiB)")
    p.add_argument("--idle-timeout", type=float, default=300.0, metavar="S",
                   help="close a connection silent this long (default 300 s)")
    p.add_argument("--max-connections", type=int, default=200,
                   help="connections at once; more are closed at once (default 200)")
    p.add_argument("--produce-timeout", type=float, default=10.0, metavar="S",
                   help="wait this long for Kafka, then answer AR (default 10 s)")
    p.add_argument("--idempotence", action="store_true",
                   help="Kafka idempotent producer (Apache Kafka; not on the embedded broker)")
    p.add_argument("--tls-cert", default=_env("CLSMON_HL7_TLS_CERT"), metavar="PEM",
                   help="serve MLLP over TLS with this certificate (env CLSMON_HL7_TLS_CERT)")
    p.add_argument("--tls-key", default=_env("CLSMON_HL7_TLS_KEY"), metavar="PEM",
                   help="its private key (env CLSMON_HL7_TLS_KEY)")
    p.add_argument("--tls-client-ca", default=_env("CLSMON_HL7_TLS_CLIENT_CA"), metavar="PEM",
                   help="require client certificates signed by this CA (mutual TLS)")
    _add_web_options(p, "CLSMON_HL7_METRICS_PORT", 6068)
    p.set_defaults(func=_cmd_hl7_listen, command="hl7 listen")

    p = sub.add_parser(
        "publish", help="a file of observations, FHIR or HL7 v2 messages to the input topics",
        description="Publish a file to the vitals, labs and patients topics (and interventions), "
                    "through the same "
                    "mapping as the HL7 listener and the worker: CSV/Parquet observations (the "
                    "replay's long format), JSON lines (contract records or FHIR resources), a "
                    "FHIR resource or Bundle, or HL7 v2 messages (MLLP-framed or plain). What "
                    "would be refused is printed with its reason and not sent. Exit code 1 "
                    "when anything was refused. With --patients and --interventions (the "
                    "replay's files) their records are sent among the observations in the "
                    "order the replay applies them, so the worker gives the replay's alerts.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--patients", metavar="FILE",
                   help="patient context (the replay's --patients file: admissions and "
                        "discharges) to the patients topic, each at its time")
    p.add_argument("--interventions", metavar="FILE",
                   help="interventions (the replay's --interventions file) to the "
                        "interventions topic, each at its time")
    add_kafka_options(p)
    p.add_argument("--format", choices=("auto", "csv", "parquet", "jsonl", "fhir", "hl7"),
                   default="auto", help="the file's format (default: told from its content)")
    p.add_argument("--dry-run", action="store_true",
                   help="only validate: print what would be refused, send nothing")
    _add_topic_prefix(p)
    p.add_argument("--partitions", type=int, default=int(_env("CLSMON_PARTITIONS", "3")),
                   help="partitions of the topics if they must be created (default 3)")
    _add_interface_options(p)
    p.set_defaults(func=_cmd_publish)


def _interface_settings(args: argparse.Namespace) -> tuple[Any, Any]:
    """(Hl7Settings, FhirSettings) from the shared interface flags."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from streams.interfaces.codes import InterfaceError, load_tables
    from streams.interfaces.fhir.inbound import FhirSettings
    from streams.interfaces.hl7.inbound import Hl7Settings

    try:
        zone = ZoneInfo(args.sender_tz) if args.sender_tz else None
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InterfaceError(f"--sender-tz {args.sender_tz!r} is not a time zone name "
                             f"({exc})") from exc
    tables = load_tables(args.codes, args.units)
    return (Hl7Settings(tables, args.id_authority, zone),
            FhirSettings(tables, args.patient_system))


def _add_interface_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id-authority", default=_env("CLSMON_HL7_ID_AUTHORITY"), metavar="CX4",
                   help="HL7 PID-3 assigning authority of the patient id (env "
                        "CLSMON_HL7_ID_AUTHORITY; default: PID-3 must hold one identifier)")
    p.add_argument("--patient-system", default=_env("CLSMON_FHIR_PATIENT_SYSTEM"),
                   metavar="URI", help="FHIR Identifier.system of the patient ids (env "
                                       "CLSMON_FHIR_PATIENT_SYSTEM; default: the subject's "
                                       "one identifier)")
    p.add_argument("--sender-tz", default=_env("CLSMON_HL7_SENDER_TZ"), metavar="ZONE",
                   help="time zone of HL7 senders whose times have no offset, e.g. "
                        "Europe/Berlin (env CLSMON_HL7_SENDER_TZ; default: such times are "
                        "refused)")
    p.add_argument("--codes", default=_env("CLSMON_CODES"), metavar="CSV",
                   help="code table (system,code,kind) instead of the built-in one (env "
                        "CLSMON_CODES)")
    p.add_argument("--units", default=_env("CLSMON_UNITS"), metavar="CSV",
                   help="MDC unit table (system,code,ucum) (env CLSMON_UNITS)")


def _cmd_publish(args: argparse.Namespace) -> int:
    from streams.interfaces.publish import run_publish
    from streams.kafka.topics import TopicNames

    hl7, fhir = _interface_settings(args)
    return run_publish(args.file, bootstrap=None if args.dry_run else kafka_connection(args),
                       names=TopicNames(args.topic_prefix), fmt=args.format, hl7=hl7,
                       fhir=fhir, dry_run=args.dry_run, partitions=args.partitions,
                       patients=args.patients, interventions=args.interventions)


#: the errors a user can fix, by module: a module that was never imported cannot have raised
#: its error, so none is imported just to catch it (pandas alone costs seconds: an unreachable
#: broker must be reported within 10 s)
_USER_ERRORS = {"detectors.config": "ThresholdsError",
                "streams.offline.sources": "ReplayError",
                "streams.offline.mimic3.mapping": "Mimic3Error",
                "streams.kafka.connection": "BrokerError",
                "streams.notify.oncall": "OnCallError",
                "streams.notify.routing": "RoutingError",
                "streams.board.cli": "BoardError",
                "streams.demo": "DemoError",
                "streams.interfaces.codes": "InterfaceError",
                "streams.kafka.topics": "TopicLayoutError"}


def _expected_errors() -> tuple[type[Exception], ...]:
    loaded = tuple(getattr(sys.modules[module], name) for module, name in _USER_ERRORS.items()
                   if module in sys.modules)
    return (*_EXPECTED_ERRORS, *loaded)


def main(argv: Sequence[str] | None = None) -> int:
    from streams.ops.engine import EngineError, select

    try:  # before anything imports detectors: the compiled build or the source tree
        select()
    except EngineError as exc:
        print(f"clsmon: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as exc:
        if not isinstance(exc, _expected_errors()):
            raise
        print(f"clsmon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
