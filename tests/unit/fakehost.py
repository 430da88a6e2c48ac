"""Custom pyinfra operations tested as pyinfra's own are: the operation's `_inner` generator,
run against a host that answers its one fact, from fake facts to the commands it yields."""

from pyinfra.context import ctx_host


class FakeHost:
    """What an operation asks of pyinfra's host: one fact, given, and noop."""

    name = "web1"

    def __init__(self, fact_class, fact):
        self.fact_class, self.fact, self.noops = fact_class, fact, []

    def get_fact(self, fact_class, **_arguments):
        assert fact_class is self.fact_class
        return self.fact

    def noop(self, text: str) -> None:
        self.noops.append(text)


def run(operation, fact_class, fact, **arguments) -> tuple[list[str], list[str]]:
    """The commands `operation` yields on a host with `fact`, and what it said when it had none."""
    host = FakeHost(fact_class, fact)
    with ctx_host.use(host):
        return [str(command) for command in operation._inner(**arguments)], host.noops
