"""What the host and the tester both need to know about test code: graded asserts, free names, instrumentation."""

import ast
import builtins


def _is_constant_assert(node):
    return isinstance(node.test, ast.Constant)  # `assert True, "..."` checks nothing about the solution


def graded_assert_nodes(source):
    """The asserts of a HumanEval ``check`` that earn credit, in source order (the order ``instrument`` numbers)."""
    found = [
        n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Assert) and not _is_constant_assert(n)
    ]
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


def graded_asserts(source):
    """``graded_assert_nodes`` as (line, first source line)."""
    lines = source.splitlines()
    return [(n.lineno, lines[n.lineno - 1].strip()) for n in graded_assert_nodes(source)]


def free_names(sources):
    """Names the tests read but never bind and Python does not provide: the solution's, to be called remotely."""
    names = []
    for source in sources:
        tree = ast.parse(source)
        bound = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                bound.add(node.id)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.add(node.name)
            elif isinstance(node, ast.alias):
                bound.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bound.add(node.name)
        for node in ast.walk(tree):
            loaded = isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
            if loaded and node.id not in bound and not hasattr(builtins, node.id) and node.id not in names:
                names.append(node.id)
    return names


class _Instrument(ast.NodeTransformer):
    """Record the operands each assert compares (for feedback) and, in graded mode, give every assert its own
    verdict: ``assert X`` becomes ``_ag_check(i, lambda: X)``-like statements that record and carry on."""

    def __init__(self, graded):
        self.graded, self.index = graded, 0

    def visit_Assert(self, node):
        node.test = _Seen().visit(node.test)
        if not self.graded or _is_constant_assert(node):
            return node
        index, self.index = self.index, self.index + 1
        call = ast.Call(ast.Name("_ag_assert", ast.Load()), [ast.Constant(index)], [])
        begin = ast.Expr(ast.Call(ast.Name("_ag_begin", ast.Load()), [ast.Constant(index)], []))
        ok = ast.If(
            node.test, [ast.Expr(call)], [ast.Expr(ast.Call(ast.Name("_ag_refute", ast.Load()), [], []))]
        )
        fail = ast.ExceptHandler(
            ast.Name("BaseException", ast.Load()),
            "_ag_exc",
            [ast.Expr(ast.Call(ast.Name("_ag_raised", ast.Load()), [ast.Name("_ag_exc", ast.Load())], []))],
        )
        guarded = ast.Try([begin, ok], [fail], [], [])
        return ast.copy_location(guarded, node)


class _Seen(ast.NodeTransformer):
    def visit_Compare(self, node):
        self.generic_visit(node)
        wrap = lambda e: ast.copy_location(ast.Call(ast.Name("_ag_seen", ast.Load()), [e], []), e)  # noqa: E731
        node.left, node.comparators = wrap(node.left), [wrap(c) for c in node.comparators]
        return node


def instrument(source, graded):
    """Compiled test code: asserts record what they compared; with ``graded`` each records its own verdict."""
    tree = ast.fix_missing_locations(_Instrument(graded).visit(ast.parse(source, "<test>")))
    return compile(tree, "<test>", "exec", dont_inherit=True)
