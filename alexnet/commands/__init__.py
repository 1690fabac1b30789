"""One module per CLI subcommand; each has ``register(subparsers)`` that sets ``func``.

``func(args)`` returns an exit code (or None for 0) and raises :class:`alexnet.errors.UserError`
for anything the user can fix.
"""

COMMANDS = ("prepare", "train", "evaluate", "predict", "demo", "show", "experiment", "report", "export")


import argparse  # noqa: E402


class CommaList(argparse.Action):
    """A list flag that takes one word, its items joined by commas (``--freeze conv1,conv2``).

    One word, so that the flag never takes the positional arguments after it as list items
    (``--freeze conv1 DATA``). Given twice, the lists join; given once, it replaces the default.
    ``item`` converts each item, ``choices`` (checked after ``item``) names the allowed ones.
    """

    def __init__(self, option_strings, dest, item=str, choices=None, **kwargs) -> None:
        if kwargs.get("nargs") is not None:
            raise ValueError("CommaList takes one word: no nargs")
        self.item = item
        self.items_from = None if choices is None else tuple(choices)  # argparse would check the whole word
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        words = values.split(",")
        if any(not w.strip() for w in words):
            parser.error(f"argument {option_string}: an empty item in {values!r}; write the list as a,b,c")
        items = []
        for word in words:
            try:
                items.append(self.item(word.strip()))
            except (TypeError, ValueError):
                parser.error(f"argument {option_string}: invalid {getattr(self.item, '__name__', 'item')} "
                             f"value: {word.strip()!r}")
        if self.items_from is not None:
            for item in items:
                if item not in self.items_from:
                    parser.error(f"argument {option_string}: invalid choice: {item!r} "
                                 f"(choose from {', '.join(map(str, self.items_from))})")
        current = getattr(namespace, self.dest, None)
        joined = list(current) if current is not None and current is not self.default else []
        setattr(namespace, self.dest, joined + items)
