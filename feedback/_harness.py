"""The harness program every graded run executes inside the sandbox (sent as source, never imported).

It must not trust anything the solution can reach after it loads:
every builtin and module function it uses later is bound to a local first, report lines are assembled
only from literals, digits and hex (no JSON library, no str subclass methods), and the nonce lives only in
a closure, never in a global.
"""

# ruff: noqa
import ast as _ast, builtins as _builtins, json as _json, os as _os, signal as _signal


def _harness():
    read, write, dup, dup2, exit_ = _os.read, _os.write, _os.dup, _os.dup2, _os._exit
    setitimer, REAL = _signal.setitimer, _signal.ITIMER_REAL
    enc, join, hexb, irepr, frepr = str.encode, str.join, bytes.hex, int.__repr__, float.__repr__
    type_, exec_, compile_, dict_, len_, range_, ord_ = type, exec, compile, dict, len, range, ord
    str_, bytes_, repr_, A = str, bytes, repr, _ast
    recent = []  # the values the current test's asserts compared last
    PLAIN = (type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset, range)
    pristine = dict(_builtins.__dict__)  # tests see these builtins even if the solution patches the module
    BaseExc, TypeErr, ValueErr, NameErr, INF = BaseException, TypeError, ValueError, NameError, float("inf")
    chunks = []
    while True:
        chunk = read(0, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\n")
    prefix = b"\n" + head.strip() + b" "
    payload = _json.loads(body)
    del head, body, chunks
    null = _os.open(_os.devnull, _os.O_RDONLY)
    dup2(null, 0)
    report_fd = dup(1)  # private copy of stdout; the solution's prints go to stderr
    dup2(2, 1)

    def report(text):
        data = prefix + enc(text, "ascii") + b"\n"
        while data:
            data = data[write(report_fd, data) :]

    def hx(text, limit=4000):
        try:
            return hexb(enc(text, "utf-8", "replace")[:limit])
        except BaseExc:
            return ""

    def report_test(i, ok, timed_out, err, key, tail):
        # Built from literals, digits and hex only, like every report line.
        parts = ['{"k":"test","i":', irepr(i), ',"ok":', "true" if ok else "false", ',"to":']
        parts += ["true" if timed_out else "false", ',"err":"', hx(err), key, tail, '"}']
        report(join("", parts))

    class Timeout(BaseException):
        pass

    armed = [False]

    def on_alarm(signum, frame):
        if armed[0]:
            armed[0] = False
            raise Timeout()

    _signal.signal(_signal.SIGALRM, on_alarm)

    def describe(exc):
        name, msg, ln = "Error", "", ""
        try:
            armed[0] = True
            setitimer(REAL, 1.0)
            try:
                name = type_(exc).__name__
                tb = exc.__traceback__
                while tb is not None:
                    if tb.tb_frame.f_code.co_filename == "<test>":
                        ln = irepr(tb.tb_lineno)
                    tb = tb.tb_next
                msg = str_(exc)
                if not msg and len_(recent) == 2 and name == "AssertionError":
                    # the last two values an assert compared (plain() vetted them, so repr is built-in)
                    msg = join("", ["compared ", repr_(recent[0])[:300], " with ", repr_(recent[1])[:300]])
            finally:
                armed[0] = False
                setitimer(REAL, 0)
        except BaseExc:
            pass
        try:
            return join("", [name, ": ", msg] if msg else [name]), ln
        except BaseExc:
            return "Error", ln

    def run(thunk, limit):
        try:
            armed[0] = True
            setitimer(REAL, limit)
            try:
                value = thunk()
            finally:
                armed[0] = False
                setitimer(REAL, 0)
            return True, False, "", "", value
        except Timeout:
            return False, True, join("", ["TimeoutError: took longer than ", frepr(limit), "s"]), "", ""
        except BaseExc as exc:
            err, ln = describe(exc)
            return False, False, err, ln, ""

    def to_json(v, out, depth):
        t = type_(v)
        if v is None or v is True or v is False:
            out.append("null" if v is None else "true" if v else "false")
        elif t is int:
            out.append(irepr(v))
        elif t is float:
            out.append(
                "NaN" if v != v else "Infinity" if v == INF else "-Infinity" if v == -INF else frepr(v)
            )
        elif t is str:
            out.append('"')
            for ch in v:
                o = ord_(ch)
                if 32 <= o < 127 and ch != '"' and ch != "\\":
                    out.append(ch)
                elif o > 0xFFFF:
                    o -= 0x10000
                    out.append(
                        join(
                            "",
                            [
                                "\\u",
                                hexb(bytes_([0xD8 | o >> 18, o >> 10 & 0xFF])),
                                "\\u",
                                hexb(bytes_([0xDC | o >> 8 & 3, o & 0xFF])),
                            ],
                        )
                    )
                else:
                    out.append(join("", ["\\u", hexb(bytes_([o >> 8, o & 0xFF]))]))
            out.append('"')
        elif t is list or t is dict:
            if depth > 50 or len_(out) > 30000:
                raise ValueErr("the returned value is too deep or too large")
            out.append("[" if t is list else "{")
            first = True
            for k in v:
                if not first:
                    out.append(",")
                first = False
                to_json(k, out, depth + 1)
                if t is dict:
                    if type_(k) is not str:
                        raise TypeErr("dict keys must be str to compare as JSON")
                    out.append(":")
                    to_json(v[k], out, depth + 1)
            out.append("]" if t is list else "}")
        else:
            raise TypeErr(
                join("", ["returned a ", t.__name__, ": only JSON types count (tuples are not lists)"])
            )

    def plain(v, depth=0):
        # what a test compares must be built-in values, so no object's own __eq__/__bool__ decides a verdict
        t = type_(v)
        if depth > 100:
            raise ValueErr("a compared value is nested too deeply")
        if t is list or t is tuple or t is set or t is frozenset:
            for x in v:
                plain(x, depth + 1)
        elif t is dict:
            for k in v:
                plain(k, depth + 1)
                plain(v[k], depth + 1)
        else:
            for p in PLAIN:
                if t is p or (t is type_ and v is p):
                    break
            else:
                raise TypeErr(
                    join("", ["a test compared a ", t.__name__, " object; only built-in values count"])
                )
        if depth == 0:
            recent.append(v)
            del recent[:-2]
        return v

    def wrap(e):
        call = A.Call(func=A.Name(id="_aligngym_plain", ctx=A.Load()), args=[e], keywords=[])
        return A.copy_location(call, e)

    def truth(e):
        if isinstance(e, A.BoolOp):
            e.values = [truth(v) for v in e.values]
        elif isinstance(e, A.UnaryOp) and isinstance(e.op, A.Not):
            e.operand = truth(e.operand)
        elif not isinstance(e, A.Compare):
            e = wrap(e)
        return e

    class Operands(A.NodeTransformer):
        def visit_Compare(self, node):
            self.generic_visit(node)
            node.left, node.comparators = wrap(node.left), [wrap(c) for c in node.comparators]
            return node

    class Asserts(A.NodeTransformer):
        def visit_Assert(self, node):
            node.test = truth(Operands().visit(node.test))
            return node

    compiled = []  # tests are compiled before the solution runs, with every assert operand guarded
    for src in payload.get("tests", []):
        try:
            tree = A.fix_missing_locations(Asserts().visit(A.parse(src, "<test>")))
            compiled.append((True, compile_(tree, "<test>", "exec", dont_inherit=True)))
        except BaseExc as exc:
            compiled.append((False, exc))

    ns = {"__name__": "solution", "__builtins__": _builtins}
    limit = payload["limit"]
    try:
        code = compile_(payload["solution"], "<solution>", "exec", dont_inherit=True)
    except BaseExc as exc:
        report(join("", ['{"k":"load","phase":"compile","err":"', hx(describe(exc)[0]), '"}']))
        code = None
    if code is not None:
        ok, timed_out, err, _, _ = run(lambda: exec_(code, ns), limit)
        if not ok:
            to = "true" if timed_out else "false"
            report(join("", ['{"k":"load","phase":"exec","to":', to, ',"err":"', hx(err), '"}']))
        elif payload["kind"] == "cases":
            name, inputs = payload["entry_point"], payload["inputs"]
            for i in range_(len_(inputs)):

                def call(args=inputs[i]):
                    if name not in ns:
                        raise NameErr(join("", ["name '", name, "' is not defined"]))
                    out = []
                    to_json(ns[name](*args), out, 0)
                    return join("", out)

                ok, timed_out, err, ln, value = run(call, limit)
                report_test(i, ok, timed_out, err, '","val":"', hx(value, 120000))
        else:
            for i in range_(len_(compiled)):

                def test(item=compiled[i]):
                    if not item[0]:
                        raise item[1]
                    del recent[:]
                    env = dict_(ns)
                    env["__builtins__"], env["_aligngym_plain"] = dict_(pristine), plain
                    exec_(item[1], env)
                    return ""

                ok, timed_out, err, ln, _ = run(test, limit)
                report_test(i, ok, timed_out, err, '","ln":"', ln)
    report('{"k":"end"}')
    exit_(0)  # skip interpreter teardown: the solution's threads and atexit hooks must not hang the run


_harness()
