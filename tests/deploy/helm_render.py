# Renders a Helm chart without helm: the subset of Go templates and Sprig functions the Kiln chart uses.
"""A small Helm renderer for tests.

It implements exactly the template syntax deploy/helm/kiln uses (deploy/README.md lists it):
actions with `{{-`/`-}}` trimming and comments; `.Values...`, `.Release...`, `.Chart...`, `$`,
`$var` and `$var.field`; `$x := pipeline`; pipelines with `|` and parenthesised sub-pipelines;
if / else if / else, with / else, range (lists and maps, with `$i, $v :=`), define / include; and
the functions quote, default, toYaml, nindent, indent, trunc, trimSuffix, int, printf, eq, ne, not,
and, or, required. Anything else is an error, so the chart cannot drift outside the subset unnoticed.

Values follow Helm's own conversions where they change the output: numbers read from values files
become float64, as in Helm (which decodes YAML through JSON), and print as Go's %v prints a float64
(1000000 prints as 1e+06, the reason the chart pipes large numbers through `int`); toYaml sorts map
keys, as Helm's does.
"""

import decimal
import math
import os
import re

import yaml


class TemplateError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Values: Helm's number handling and Go's printing.


def helm_values(v):
    """Numbers as Helm sees values-file numbers: float64 (bools stay bools)."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dict):
        return {str(k): helm_values(x) for k, x in v.items()}
    if isinstance(v, list):
        return [helm_values(x) for x in v]
    return v


def go_float(f):
    """fmt's %v for a float64: FormatFloat(f, 'g', -1, 64), shortest digits, %e from exponent 6 up or below -4."""
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if math.isnan(f):
        return "NaN"
    if f == 0:
        return "0"
    sign, digit_tuple, exponent = decimal.Decimal(repr(abs(f))).normalize().as_tuple()
    digits = "".join(str(d) for d in digit_tuple)
    point = len(digits) + exponent  # digits before the decimal point
    x = point - 1  # the exponent in d.ddd e x form
    sign = "-" if f < 0 else ""
    if x < -4 or x >= 6:
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return "%s%se%s%02d" % (sign, m, "-" if x < 0 else "+", abs(x))
    if point <= 0:
        return sign + "0." + "0" * (-point) + digits
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return sign + digits[:point] + "." + digits[point:]


def go_print(v):
    """How text/template prints a value in an action."""
    if v is None:
        raise TemplateError("printing a missing value (Helm would print nothing): check the value's name")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v
    raise TemplateError("printing a %s directly: pipe it through toYaml" % type(v).__name__)


def truthy(v):
    """text/template's truth: false, 0, nil and empty strings, lists and maps are false."""
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


class _JsonLikeDumper(yaml.SafeDumper):
    pass


def _float_representer(dumper, value):
    # Helm's toYaml goes through encoding/json, which writes integral floats without a fraction.
    if value.is_integer() and abs(value) < 1e21:
        return dumper.represent_int(int(value))
    return dumper.represent_scalar("tag:yaml.org,2002:float", repr(value))


_JsonLikeDumper.add_representer(float, _float_representer)


def to_yaml(v):
    if v is None:
        return "null"
    text = yaml.dump(v, Dumper=_JsonLikeDumper, sort_keys=True, default_flow_style=False, width=1 << 30)
    if text.endswith("\n...\n"):  # a bare scalar
        text = text[: -len("...\n")]
    return text.rstrip("\n") if text.endswith("\n") else text


# ---------------------------------------------------------------------------------------------
# Lexing: the template into text and actions, an action into tokens.

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def split_template(src, name):
    """[(kind, text)] with kind 'text' or 'action', trim markers applied to the neighbouring text."""
    parts = []
    pos = 0
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        parts.append(["text", text])
        body = m.group(2).strip()
        parts.append(["action", body, m.group(3) is not None, name, src.count("\n", 0, m.start()) + 1])
        pos = m.end()
    parts.append(["text", src[pos:]])
    # A right trim marker trims the text after it.
    for i, p in enumerate(parts):
        if p[0] == "action" and p[2]:
            parts[i + 1][1] = parts[i + 1][1].lstrip(" \t\r\n")
    return parts


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<assign>:=)
  | (?P<eq>=)
  | (?P<pipe>\|)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<comma>,)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.X)


def tokenize(body, where):
    out = []
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if not m:
            raise TemplateError("%s: cannot read %r" % (where, body[pos:]))
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        text = m.group(kind)
        if kind == "str":
            text = bytes(text[1:-1], "utf-8").decode("unicode_escape")
            out.append(("lit", text))
        elif kind == "raw":
            out.append(("lit", text[1:-1]))
        elif kind == "num":
            out.append(("lit", float(text) if "." in text else int(text)))
        elif kind == "ident" and text in ("true", "false"):
            out.append(("lit", text == "true"))
        elif kind == "ident" and text == "nil":
            out.append(("lit", None))
        else:
            out.append((kind, text))
    return out


# ---------------------------------------------------------------------------------------------
# Parsing: pipelines and the block structure.


class Pipeline:
    """[$a[, $b] :=] cmd | cmd ...; each cmd is a list of operands (an operand: a token or a Pipeline)."""

    def __init__(self, decl, cmds, assign, where):
        self.decl, self.cmds, self.assign, self.where = decl, cmds, assign, where


def parse_pipeline(tokens, where):
    decl = []
    assign = False
    i = 0
    # Declarations: `$x :=`, `$i, $v :=`, or `$x =` (assignment to an existing variable).
    j = 0
    while j < len(tokens) and tokens[j][0] == "var":
        if j + 1 < len(tokens) and tokens[j + 1][0] == "comma":
            j += 2
            continue
        if j + 1 < len(tokens) and tokens[j + 1][0] in ("assign", "eq"):
            decl = [t[1] for t in tokens[0:j + 1:2]]
            assign = tokens[j + 1][0] == "eq"
            i = j + 2
        break
    cmds, rest = _parse_cmds(tokens[i:], where, top=True)
    if rest:
        raise TemplateError("%s: unexpected %r" % (where, rest[0][1]))
    if not cmds or any(not c for c in cmds):
        raise TemplateError("%s: empty command in pipeline" % where)
    return Pipeline(decl, cmds, assign, where)


def _parse_cmds(tokens, where, top):
    cmds = [[]]
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "pipe":
            cmds.append([])
            i += 1
        elif kind == "lp":
            sub, consumed = _parse_paren(tokens[i + 1:], where)
            cmds[-1].append(sub)
            i += 1 + consumed
        elif kind == "rp":
            if top:
                raise TemplateError("%s: unbalanced ')'" % where)
            return cmds, tokens[i:]
        elif kind in ("lit", "var", "field", "ident"):
            cmds[-1].append((kind, text))
            i += 1
        else:
            raise TemplateError("%s: unexpected %r" % (where, text))
    if not top:
        raise TemplateError("%s: missing ')'" % where)
    return cmds, []


def _parse_paren(tokens, where):
    cmds, rest = _parse_cmds(tokens, where, top=False)
    consumed = len(tokens) - len(rest) + 1  # through the ')'
    if not cmds or any(not c for c in cmds):
        raise TemplateError("%s: empty parenthesised pipeline" % where)
    return Pipeline([], cmds, False, where), consumed


class Node:
    def __init__(self, kind, **kw):
        self.kind = kind
        self.__dict__.update(kw)


_KEYWORDS = ("if", "else", "end", "with", "range", "define", "template", "block", "break", "continue")


def parse(src, name):
    """Returns (nodes, defines)."""
    parts = split_template(src, name)
    defines = {}
    pos = 0

    def where(p):
        return "%s:%d" % (p[3], p[4])

    def parse_list(stop):
        nonlocal pos
        nodes = []
        while pos < len(parts):
            p = parts[pos]
            if p[0] == "text":
                if p[1]:
                    nodes.append(Node("text", text=p[1]))
                pos += 1
                continue
            body = p[1]
            if body.startswith("/*"):
                if not body.endswith("*/"):
                    raise TemplateError("%s: unterminated comment" % where(p))
                pos += 1
                continue
            word = body.split(None, 1)[0] if body else ""
            rest = body[len(word):].strip()
            if word in ("end", "else"):
                if word not in stop:
                    raise TemplateError("%s: unexpected {{%s}}" % (where(p), body))
                pos += 1
                return nodes, word, rest, p
            pos += 1
            if word in ("if", "with"):
                branches = [(parse_pipeline(tokenize(rest, where(p)), where(p)), None)]
                body_nodes, ended, erest, ep = parse_list(("end", "else"))
                branches[0] = (branches[0][0], body_nodes)
                else_nodes = None
                while ended == "else":
                    if erest.startswith("if ") and word == "if":
                        cond = parse_pipeline(tokenize(erest[3:], where(ep)), where(ep))
                        body_nodes, ended, erest, ep = parse_list(("end", "else"))
                        branches.append((cond, body_nodes))
                    elif erest:
                        raise TemplateError("%s: unsupported {{else %s}}" % (where(ep), erest))
                    else:
                        else_nodes, ended, erest, ep = parse_list(("end",))
                nodes.append(Node(word, branches=branches, else_nodes=else_nodes, where=where(p)))
            elif word == "range":
                pipe = parse_pipeline(tokenize(rest, where(p)), where(p))
                body_nodes, ended, erest, ep = parse_list(("end", "else"))
                else_nodes = None
                if ended == "else":
                    if erest:
                        raise TemplateError("%s: unsupported {{else %s}} in range" % (where(ep), erest))
                    else_nodes, ended, erest, ep = parse_list(("end",))
                nodes.append(Node("range", pipe=pipe, body=body_nodes, else_nodes=else_nodes, where=where(p)))
            elif word == "define":
                toks = tokenize(rest, where(p))
                if len(toks) != 1 or toks[0][0] != "lit" or not isinstance(toks[0][1], str):
                    raise TemplateError("%s: define takes one quoted name" % where(p))
                body_nodes, ended, erest, ep = parse_list(("end",))
                defines[toks[0][1]] = body_nodes
            elif word in _KEYWORDS:
                raise TemplateError("%s: {{%s}} is outside the supported subset" % (where(p), word))
            else:
                nodes.append(Node("action", pipe=parse_pipeline(tokenize(body, where(p)), where(p))))
        if stop:
            raise TemplateError("%s: missing {{end}}" % name)
        return nodes, None, None, None

    nodes, _, _, _ = parse_list(())
    return nodes, defines


# ---------------------------------------------------------------------------------------------
# Evaluation.


class Scope:
    def __init__(self, parent=None):
        self.vars = {}
        self.parent = parent

    @staticmethod
    def top(dot):
        """A template's outermost scope, where `$` is the data it was called with."""
        s = Scope()
        s.vars["$"] = dot
        return s

    def lookup(self, name):
        s = self
        while s:
            if name in s.vars:
                return s.vars[name]
            s = s.parent
        raise TemplateError("undefined variable %s" % name)

    def set_existing(self, name, value):
        s = self
        while s:
            if name in s.vars:
                s.vars[name] = value
                return
            s = s.parent
        raise TemplateError("assignment to undefined variable %s" % name)


def _field(value, names, where):
    for n in names:
        if value is None:
            raise TemplateError("%s: nil pointer evaluating .%s" % (where, n))
        if not isinstance(value, dict):
            raise TemplateError("%s: can't evaluate field %s in a %s" % (where, n, type(value).__name__))
        value = value.get(n)
    return value


def _strval(v):
    return v if isinstance(v, str) else go_print(v)


def _to_int(v):
    if v is None:
        return 0
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, str):
        try:
            return int(float(v))
        except ValueError:
            return 0
    return 0


def _printf(fmt, *args):
    out = []
    i = 0
    args = list(args)
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        verb = fmt[i + 1] if i + 1 < len(fmt) else ""
        i += 2
        if verb == "%":
            out.append("%")
            continue
        if not args:
            raise TemplateError("printf: too few arguments for %r" % fmt)
        a = args.pop(0)
        if verb in ("s", "v"):
            out.append(_strval(a))
        elif verb == "d":
            if not isinstance(a, int) or isinstance(a, bool):
                raise TemplateError("printf: %%d of a non-integer (%r); pipe it through int" % (a,))
            out.append(str(a))
        elif verb == "q":
            out.append(_quote(a))
        else:
            raise TemplateError("printf: verb %%%s is outside the supported subset" % verb)
    if args:
        raise TemplateError("printf: too many arguments for %r" % fmt)
    return "".join(out)


def _quote(v):
    s = "" if v is None else _strval(v)
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append("\\x%02x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _indent(n, s):
    pad = " " * _to_int(n)
    return pad + _strval(s).replace("\n", "\n" + pad)


def _eq(a, *bs):
    for b in bs:
        if type(a) is not type(b) and not (isinstance(a, str) and isinstance(b, str)):
            raise TemplateError("eq: incompatible types for comparison (%r, %r)" % (a, b))
        if a == b:
            return True
    return False


def _required(msg, v):
    if v is None or (isinstance(v, str) and v == ""):
        raise TemplateError("required: " + msg)
    return v


def _trim_suffix(suffix, s):
    s = _strval(s)
    return s[:-len(suffix)] if suffix and s.endswith(suffix) else s


def _trunc(n, s):
    s = _strval(s)
    n = _to_int(n)
    return s[:n] if n >= 0 else s[n:]


FUNCS = {
    "quote": lambda *a: " ".join(_quote(x) for x in a),
    "default": lambda d, *given: given[0] if given and truthy(given[0]) else d,
    "toYaml": to_yaml,
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "indent": _indent,
    "trunc": _trunc,
    "trimSuffix": _trim_suffix,
    "int": _to_int,
    "printf": _printf,
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "not": lambda v: not truthy(v),
    "required": _required,
}


class Renderer:
    def __init__(self, defines):
        self.defines = defines

    def render(self, nodes, dot, scope):
        out = []
        for n in nodes:
            if n.kind == "text":
                out.append(n.text)
            elif n.kind == "action":
                value = self.pipe(n.pipe, dot, scope)
                if not n.pipe.decl:
                    out.append(go_print(value))
            elif n.kind in ("if", "with"):
                inner = Scope(scope)
                for cond, body in n.branches:
                    value = self.pipe(cond, dot, inner)
                    if truthy(value):
                        out.append(self.render(body, value if n.kind == "with" else dot, Scope(inner)))
                        break
                else:
                    if n.else_nodes is not None:
                        out.append(self.render(n.else_nodes, dot, Scope(inner)))
            elif n.kind == "range":
                inner = Scope(scope)
                decl = n.pipe.decl
                pipe = Pipeline([], n.pipe.cmds, False, n.pipe.where)
                coll = self.pipe(pipe, dot, inner)
                if coll is None:
                    items = []
                elif isinstance(coll, dict):
                    items = [(k, coll[k]) for k in sorted(coll)]
                elif isinstance(coll, list):
                    items = list(enumerate(coll))
                else:
                    raise TemplateError("%s: range over a %s" % (n.where, type(coll).__name__))
                if not items and n.else_nodes is not None:
                    out.append(self.render(n.else_nodes, dot, Scope(inner)))
                for k, v in items:
                    body_scope = Scope(inner)
                    if len(decl) == 1:
                        body_scope.vars[decl[0]] = v
                    elif len(decl) == 2:
                        body_scope.vars[decl[0]] = k
                        body_scope.vars[decl[1]] = v
                    out.append(self.render(n.body, v, body_scope))
            else:
                raise TemplateError("unknown node " + n.kind)
        return "".join(out)

    def pipe(self, p, dot, scope):
        value = None
        first = True
        for cmd in p.cmds:
            value = self.command(cmd, dot, scope, None if first else value, not first, p.where)
            first = False
        if p.decl:
            if len(p.decl) != 1:
                raise TemplateError("%s: two variables outside range" % p.where)
            if p.assign:
                scope.set_existing(p.decl[0], value)
            else:
                scope.vars[p.decl[0]] = value
        return value

    def operand(self, op, dot, scope, where):
        if isinstance(op, Pipeline):
            return self.pipe(op, dot, scope)
        kind, text = op
        if kind == "lit":
            return text
        if kind == "field":
            if text == ".":
                return dot
            return _field(dot, text[1:].split("."), where)
        if kind == "var":
            name, _, path = text.partition(".")
            base = scope.lookup(name)
            return _field(base, path.split("."), where) if path else base
        if kind == "ident":
            return self.call(text, [], where)
        raise TemplateError("%s: bad operand %r" % (where, text))

    def command(self, cmd, dot, scope, piped, has_piped, where):
        head = cmd[0]
        if not isinstance(head, Pipeline) and head[0] == "ident":
            args = [self.operand(a, dot, scope, where) for a in cmd[1:]]
            if has_piped:
                args.append(piped)
            return self.call(head[1], args, where)
        if len(cmd) != 1 or has_piped:
            raise TemplateError("%s: can't give arguments to a non-function" % where)
        return self.operand(head, dot, scope, where)

    def call(self, name, args, where):
        if name == "include":
            if len(args) != 2 or not isinstance(args[0], str):
                raise TemplateError("%s: include takes a name and a value" % where)
            if args[0] not in self.defines:
                raise TemplateError("%s: no template %r" % (where, args[0]))
            return self.render(self.defines[args[0]], args[1], Scope.top(args[1]))
        if name in ("and", "or"):
            if not args:
                raise TemplateError("%s: %s needs arguments" % (where, name))
            for a in args:
                if truthy(a) != (name == "and"):
                    return a
            return args[-1]
        fn = FUNCS.get(name)
        if fn is None:
            raise TemplateError("%s: function %r is outside the supported subset" % (where, name))
        try:
            return fn(*args)
        except TypeError as e:
            raise TemplateError("%s: %s: %s" % (where, name, e)) from e


# ---------------------------------------------------------------------------------------------
# Charts.


def deep_merge(base, override):
    """Helm's values merge: maps merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_chart(chart_dir):
    with open(os.path.join(chart_dir, "Chart.yaml")) as f:
        meta = yaml.safe_load(f)
    with open(os.path.join(chart_dir, "values.yaml")) as f:
        values = yaml.safe_load(f) or {}
    templates = {}
    tdir = os.path.join(chart_dir, "templates")
    for name in sorted(os.listdir(tdir)):
        with open(os.path.join(tdir, name)) as f:
            templates[name] = f.read()
    return meta, values, templates


def render_chart(chart_dir, overrides=None, release_name="kiln", namespace="default"):
    """Renders every manifest template. Returns {template file name: rendered text} (NOTES.txt included)."""
    meta, values, templates = load_chart(chart_dir)
    values = helm_values(deep_merge(values, overrides or {}))
    chart = {"Name": meta["name"], "Version": str(meta["version"]), "AppVersion": str(meta.get("appVersion", ""))}
    release = {"Name": release_name, "Namespace": namespace, "Service": "Helm", "IsInstall": True,
               "IsUpgrade": False, "Revision": 1}
    root = {"Values": values, "Chart": chart, "Release": release}
    parsed = {}
    defines = {}
    for name, src in templates.items():
        nodes, d = parse(src, "templates/" + name)
        parsed[name] = nodes
        defines.update(d)
    r = Renderer(defines)
    out = {}
    for name, nodes in parsed.items():
        if name.startswith("_"):
            continue  # partials only hold defines
        out[name] = r.render(nodes, root, Scope.top(root))
    return out


def manifests(rendered):
    """The Kubernetes objects in rendered templates (NOTES.txt excluded), in file order, empty documents dropped."""
    docs = []
    for name in sorted(rendered):
        if not name.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(rendered[name]):
            if doc is not None:
                docs.append(doc)
    return docs
