"""Automatic fixes: ``flake8-amp fix``.

A fix belongs to its rule (:meth:`flake8_amp.rules.base.Rule.rewrite`, with the rule's ``fix_safety`` and
``fix_summary``); this package holds what every fix shares:

* :mod:`.source`: the module being fixed (where each ast node lies in its text, its concrete syntax tree
  from ast-grep, the edits a rule builds from them);
* :mod:`.torch_floor`: the oldest torch the project supports, read from its declared requirements;
* :mod:`.driver`: one module's fixes applied pass after pass, checked to parse;
* :mod:`.command`: the command line (flake8's options, configuration, ``# noqa`` and file handling).

The linter never imports this package's command or ast-grep: a fix is built only when ``fix`` runs.
"""
