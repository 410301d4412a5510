"""One module per `mmgpt` verb. Each has a docstring (its first line is the verb's help), ``add_arguments(parser)``
and ``run(args) -> int`` (the exit status). Modules import heavy libraries inside ``run`` so ``mmgpt --help``
stays instant. A private module (``_options``) holds what several verbs share."""
