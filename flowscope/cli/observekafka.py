"""`flowscope observe --kafka BOOTSTRAP`: the flows the agents published to Kafka, read as a
consumer (flowscope.flow.kafkaread), with observe's filters and outputs.

- without --follow: the topic from its beginning; --last N (default 20), --first N, --all,
  --since/--until select from it;
- with --follow: new records from now on (from the beginning with --since);
- --kafka-group G: read as a member of consumer group G (partitions shared with its other
  members, offsets committed), else every partition, nothing committed;
- --kafka-topic T: another flows topic; --kafka-config FILE: brokers, TLS and SASL from a file
  (collector/kafkaconfig.py), --kafka then optional;
- --node N: only node N's flows.

Malformed records on the topic are skipped; their count (and any sequence gap) goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import deque
from collections.abc import AsyncIterator

from flowscope.errors import UsageError


def add_kafka_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--kafka", metavar="BOOTSTRAP", help="read the flows topic at host:port[,host:port]"
    )
    group.add_argument("--kafka-topic", metavar="TOPIC", help="default flowscope.flows")
    group.add_argument("--kafka-group", metavar="GROUP", help="consume as this consumer group")
    group.add_argument(
        "--kafka-config", metavar="FILE", help="brokers, TLS and SASL from a TOML or JSON file"
    )


def wants_kafka(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "kafka", None) or getattr(args, "kafka_config", None))


def kafka_config(args: argparse.Namespace):
    from collector import kafkaconfig

    if args.kafka_config:
        config = kafkaconfig.load(args.kafka_config)
        if args.kafka:
            from dataclasses import replace

            config = replace(config, bootstrap=_bootstrap(args.kafka))
        return config
    return kafkaconfig.KafkaConfig(bootstrap=_bootstrap(args.kafka))


def _bootstrap(text: str) -> tuple[str, ...]:
    from collector.kafkaconfig import KafkaConfigError, parse_bootstrap

    try:
        return parse_bootstrap(text, "--kafka")
    except KafkaConfigError as e:
        raise UsageError(str(e).split("\n")[0], hint="e.g. --kafka 127.0.0.1:9092") from None


class _Selection:
    """The request's filters, node and time window, over Records."""

    def __init__(self, request, node: str | None) -> None:
        from flowscope.flow.protofilter import FilterError, compile_selection

        try:
            self.filters = compile_selection(request.whitelist, request.blacklist)
        except FilterError as e:
            raise UsageError(str(e)) from None
        self.node = node
        self.since = request.since.ToNanoseconds() if request.HasField("since") else None
        self.until = request.until.ToNanoseconds() if request.HasField("until") else None

    def matches(self, record) -> bool:
        if self.node and record.node_name != self.node:
            return False
        if self.since is not None and record.time_ns < self.since:
            return False
        if self.until is not None and record.time_ns > self.until:
            return False
        return self.filters.matches(record)


async def _responses(reader, request) -> AsyncIterator:
    """The reader's records as GetFlowsResponses, cut to the request's first/last N."""
    from flowscope.flow.protoconv import record_to_response

    if request.follow or not request.number:
        async for record in reader:
            yield record_to_response(record)
        return
    if request.first:
        n = 0
        async for record in reader:
            yield record_to_response(record)
            n += 1
            if n >= request.number:
                await reader.close()
                return
        return
    last: deque = deque(maxlen=request.number)
    async for record in reader:
        last.append(record)
    for record in last:
        yield record_to_response(record)


async def observe_kafka(args: argparse.Namespace) -> int:
    from flowscope.cli.observe import build_request, print_stream, use_color
    from flowscope.flow.compact import COLOR, PLAIN
    from flowscope.flow.kafkaread import KafkaFlowReader
    from flowscope.flow.printer import Printer

    # aiokafka tells of every subscription and rebalance at INFO: not the user's business
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    if args.follow and args.last:
        raise UsageError(
            "--last: not with --kafka --follow (a topic has no 'newest N' to start from)",
            hint="use --since to start following from a time, or drop --follow",
        )
    if args.server:
        raise UsageError("--server and --kafka: give one of them")
    request = build_request(args)
    config = kafka_config(args)
    reader = KafkaFlowReader(
        config,
        topic=args.kafka_topic,
        group=args.kafka_group,
        from_beginning=not args.follow or bool(args.since),
        follow=args.follow,
        matcher=_Selection(request, args.node),
    )
    printer = Printer(
        args.output,
        node_name=args.print_node_name,
        palette=COLOR if use_color(args.color) else PLAIN,
        debug=bool(getattr(args, "verbose", False)),
    )
    try:
        await print_stream(_responses(reader, request), printer, args.follow)
    finally:
        printer.close()
        await reader.close()
        report(reader.stats)
    return 0


def report(stats, stream=None) -> None:
    """What the reader skipped or found missing, on stderr."""
    stream = stream or sys.stderr
    if stats.malformed:
        print(
            f"warning: skipped {stats.malformed} malformed Kafka records"
            " (not flowscope FlowBatch records)",
            file=stream,
        )
    if stats.missing:
        print(
            f"warning: {stats.missing} records never arrived (sequence gaps in the topic)",
            file=stream,
        )
