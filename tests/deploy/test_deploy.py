#!/usr/bin/env python3
# Renders deploy/helm/kiln and reads deploy/kserve, validates the manifests, and checks them against `kiln serve`.
"""Deployment manifest tests.

    python3 tests/deploy/test_deploy.py --kiln build/kiln [unittest options]

--kiln (or KILN_CLI_PATH) is the kiln binary: its `serve --print-routes` route table is what the probes,
ports and metrics paths are checked against, it must accept the manifests' arguments, and a server started
with the chart's arguments must answer the chart's probes. --routes-json FILE takes a saved route table
instead, for work on the chart without a build; the tests that need the binary then skip.
"""

import argparse
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import deploy_checks as dc  # noqa: E402
import helm_render as hr  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
CHART = os.path.join(ROOT, "deploy", "helm", "kiln")
KSERVE = os.path.join(ROOT, "deploy", "kserve")
DOC = os.path.join(ROOT, "docs", "kubernetes.md")
DOCKERFILE = os.path.join(ROOT, "deploy", "docker", "Dockerfile")

OPTIONS = argparse.Namespace(kiln=os.environ.get("KILN_CLI_PATH"), routes_json=None)

# Renderings of the chart: values overrides, and what each must contain.
VARIANTS = {
    "cpu": ({}, {"gpu": False, "hpa": False, "pvc": True}),
    "gpu": ({"gpu": {"enabled": True}, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
             "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
            {"gpu": True, "hpa": False, "pvc": True}),
    "scaled": ({"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 8,
                                "targetCPUUtilizationPercentage": 80},
                "podDisruptionBudget": {"enabled": True},
                "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
                "modelRepository": {"existingClaim": "models"},
                "server": {"maxRequestBytes": 134217728, "modelControl": "explicit", "loadModels": ["resnet50", "bert"],
                           "threads": 4, "apiKeySecret": {"name": "kiln-api"}},
                "preStopSleepSeconds": 5},
               {"gpu": False, "hpa": True, "pvc": False}),
    "ports": ({"server": {"httpPort": 9080, "grpcPort": 9081}, "service": {"httpPort": 80, "grpcPort": 81}},
              {"gpu": False, "hpa": False, "pvc": True}),
    "volume": ({"modelRepository": {"mountPath": "/srv/models",
                                    "volume": {"nfs": {"server": "nfs.internal", "path": "/exports/models"}}}},
               {"gpu": False, "hpa": False, "pvc": False}),
}


def chart_values(overrides):
    with open(os.path.join(CHART, "values.yaml")) as f:
        return hr.deep_merge(yaml.safe_load(f), overrides)


def render(overrides):
    rendered = hr.render_chart(CHART, overrides)
    return rendered, hr.manifests(rendered)


def kiln_container(docs):
    dep = dc.by_kind(docs, "Deployment")[0]
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "kiln")


def kserve_docs(name):
    with open(os.path.join(KSERVE, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def adapter_rules():
    """The prometheus-adapter rules in docs/kubernetes.md (the yaml block holding `rules:`)."""
    with open(DOC) as f:
        text = f.read()
    blocks = text.split("```yaml\n")[1:]
    for b in blocks:
        body = b.split("```", 1)[0]
        doc = yaml.safe_load(body)
        if isinstance(doc, dict) and "rules" in doc:
            rules = doc["rules"]
            return rules.get("custom", []) if isinstance(rules, dict) else rules
    raise AssertionError("docs/kubernetes.md has no yaml block with prometheus-adapter rules")


_ROUTES = None


def routes():
    """The server's route table: `kiln serve --print-routes`, or the --routes-json file."""
    global _ROUTES
    if _ROUTES is None:
        if OPTIONS.routes_json:
            with open(OPTIONS.routes_json) as f:
                _ROUTES = json.load(f)
        else:
            if not OPTIONS.kiln:
                raise AssertionError("no kiln binary: pass --kiln PATH (or set KILN_CLI_PATH), or --routes-json FILE")
            p = subprocess.run([OPTIONS.kiln, "serve", "--print-routes"], capture_output=True, text=True, timeout=60)
            if p.returncode != 0:
                raise AssertionError("`kiln serve --print-routes` exited %d: %s" % (p.returncode, p.stderr.strip()))
            _ROUTES = json.loads(p.stdout)
    return _ROUTES


def need_binary(test):
    if not OPTIONS.kiln or OPTIONS.routes_json:
        test.skipTest("needs the kiln binary (--kiln)")


def local_argv(container, tmp):
    """The container's command line for this machine: paths into tmp, loopback, ports chosen by the system."""
    flags, errors = dc.parse_serve(container)
    if errors:
        raise AssertionError(errors)
    argv = [OPTIONS.kiln, "serve"]
    replace = {"--model-repository": os.path.join(tmp, "models"), "--cache-dir": os.path.join(tmp, "cache"),
               "--host": "127.0.0.1", "--http-port": "0", "--grpc-port": "0"}
    os.makedirs(replace["--model-repository"], exist_ok=True)
    os.makedirs(replace["--cache-dir"], exist_ok=True)
    for flag, values in flags.items():
        for v in values:
            v = replace.get(flag, v)
            argv += [flag] if flag in dc.SERVE_SWITCHES else [flag, v]
    return argv


# ---------------------------------------------------------------------------------------------


class RendererTest(unittest.TestCase):
    """The renderer follows Go templates and Helm where the chart relies on them."""

    def render(self, src, values=None, defines=""):
        nodes, d = hr.parse(defines + src, "test")
        root = {"Values": hr.helm_values(values or {}), "Release": {"Name": "prod", "Namespace": "ml"},
                "Chart": {"Name": "kiln", "Version": "0.1.0", "AppVersion": "0.1.0"}}
        return hr.Renderer(d).render(nodes, root, hr.Scope.top(root))

    def test_trim_markers_remove_whitespace_and_newlines(self):
        t = "a:\n  {{- if .Values.on }}\n  b: 1\n  {{- end }}\nc"
        self.assertEqual(self.render(t, {"on": True}), "a:\n  b: 1\nc")
        self.assertEqual(self.render(t, {"on": False}), "a:\nc")
        self.assertEqual(self.render("x  {{- /* gone */ -}}  \n y"), "xy")

    def test_numbers_print_as_helm_prints_float64_values(self):
        # Helm reads values-file numbers as float64 and %v prints them in the shortest form, with an
        # exponent from 1e+06 up: the reason the chart pipes ports and sizes through int.
        self.assertEqual(self.render("{{ .Values.a }} {{ .Values.b }} {{ .Values.c }}",
                                     {"a": 8000, "b": 1000000, "c": 0.25}), "8000 1e+06 0.25")
        self.assertEqual(self.render("{{ .Values.b | int }} {{ .Values.m | int | quote }}",
                                     {"b": 1000000, "m": 134217728}), '1000000 "134217728"')
        self.assertEqual(hr.go_float(67108864.0), "6.7108864e+07")
        self.assertEqual(hr.go_float(0.0001), "0.0001")
        self.assertEqual(hr.go_float(0.00001), "1e-05")

    def test_if_else_chains_with_and_range(self):
        t = "{{ if .Values.a }}A{{ else if .Values.b }}B{{ else }}C{{ end }}"
        self.assertEqual(self.render(t, {"a": "", "b": 0}), "C")
        self.assertEqual(self.render(t, {"a": [], "b": "x"}), "B")
        self.assertEqual(self.render("{{ with .Values.m }}{{ .k }}{{ else }}none{{ end }}", {"m": {"k": "v"}}), "v")
        self.assertEqual(self.render("{{ with .Values.m }}{{ .k }}{{ else }}none{{ end }}", {"m": {}}), "none")
        # Maps range in sorted key order, as Go's text/template does.
        self.assertEqual(self.render("{{ range $k, $v := .Values.m }}{{ $k }}={{ $v }},{{ end }}",
                                     {"m": {"zeta": 1, "alpha": "x"}}), "alpha=x,zeta=1,")
        t = "{{ range .Values.l }}[{{ . }}]{{ else }}empty{{ end }}"
        self.assertEqual(self.render(t, {"l": ["a", "b"]}), "[a][b]")
        self.assertEqual(self.render(t, {"l": []}), "empty")

    def test_define_include_and_dollar(self):
        defines = '{{- define "n" -}}{{ $.Release.Name }}-{{ .Chart.Name | trunc 3 }}{{- end }}'
        self.assertEqual(self.render('{{ include "n" . | quote }}', {}, defines), '"prod-kil"')
        self.assertEqual(self.render('{{ range .Values.l }}{{ $.Release.Namespace }}/{{ . }} {{ end }}', {"l": ["a"]}),
                         "ml/a ")

    def test_functions(self):
        self.assertEqual(self.render('{{ default "d" .Values.e }} {{ .Values.s | default "d" }}', {"e": "", "s": "x"}),
                         "d x")
        self.assertEqual(self.render('{{ printf "%s-%s" "ab" "cd-" | trimSuffix "-" }}'), "ab-cd")
        self.assertEqual(self.render('{{ toYaml .Values.m | nindent 2 }}', {"m": {"b": [1, 2], "a": "x"}}),
                         "\n  a: x\n  b:\n  - 1\n  - 2")
        self.assertEqual(self.render('{{ "a\nb" | indent 3 }}'), "   a\n   b")
        self.assertEqual(self.render('{{ not .Values.x }} {{ and 1 "" }} {{ or "" "y" }} {{ eq .Values.s "a" }}',
                                     {"x": 0, "s": "a"}), "true  y true")

    def test_syntax_outside_the_subset_is_an_error(self):
        for src in ("{{ upper .Values.s }}", "{{ template \"x\" . }}", "{{ .Values.missing }}", "{{ .Values.m }}",
                    "{{ if .Values.s }}x", "{{ end }}"):
            with self.assertRaises(hr.TemplateError, msg=src):
                self.render(src, {"s": "a", "m": {"k": 1}})


class ChartTest(unittest.TestCase):
    """The chart renders into manifests that agree with each other and with the server."""

    def test_route_table_has_the_documented_shape(self):
        self.assertEqual(dc.check_routes_shape(routes()), [])
        for use, path in (("liveness", dc.LIVE_PATH), ("readiness", dc.READY_PATH), ("metrics", "/metrics")):
            self.assertIn(path, dc.get_routes(routes()), use)

    def test_every_variant_passes_validation(self):
        for name, (overrides, expect) in VARIANTS.items():
            with self.subTest(variant=name):
                rendered, docs = render(overrides)
                self.assertEqual(dc.check_chart(docs, routes(), chart_values(overrides), expect), [])

    def test_defaults_equal_the_servers(self):
        values = chart_values({})
        d = routes()["defaults"]
        server_defaults = (d["http_port"], d["grpc_port"])
        self.assertEqual((values["server"]["httpPort"], values["server"]["grpcPort"]), server_defaults)
        self.assertEqual((values["service"]["httpPort"], values["service"]["grpcPort"]), server_defaults)

    def test_cpu_default(self):
        rendered, docs = render({})
        self.assertNotIn("nvidia.com/gpu", "".join(rendered.values()))
        c = kiln_container(docs)
        self.assertEqual(c["command"] + c["args"][:9],
                         ["kiln", "serve", "--model-repository", "/models", "--host", "0.0.0.0", "--http-port", "8000",
                          "--grpc-port", "8001"])
        self.assertEqual(dc.by_kind(docs, "Deployment")[0]["spec"]["replicas"], 1)
        self.assertEqual(sorted(d["kind"] for d in docs), ["Deployment", "PersistentVolumeClaim", "Service"])
        pvc = dc.by_kind(docs, "PersistentVolumeClaim")[0]
        self.assertEqual(pvc["metadata"]["name"], "kiln-models")
        self.assertEqual(pvc["spec"]["resources"]["requests"]["storage"], "10Gi")
        self.assertEqual(c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"], 900)

    def test_gpu_requests_one_gpu_and_pins_the_gpu_type(self):
        _, docs = render(VARIANTS["gpu"][0])
        c = kiln_container(docs)
        self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], "1")
        self.assertEqual(c["resources"]["requests"]["nvidia.com/gpu"], "1")
        pod = dc.by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
        self.assertEqual(pod["nodeSelector"], {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
        self.assertEqual(pod["tolerations"][0]["key"], "nvidia.com/gpu")

    def test_scaled_out_release(self):
        overrides = VARIANTS["scaled"][0]
        _, docs = render(overrides)
        c = kiln_container(docs)
        args = c["args"]
        # 134217728 passes through int: without it Helm would write 1.34217728e+08.
        self.assertEqual(args[args.index("--max-request-bytes") + 1], "134217728")
        self.assertEqual([args[i + 1] for i, a in enumerate(args) if a == "--load-model"], ["resnet50", "bert"])
        self.assertEqual(args[args.index("--model-control") + 1], "explicit")
        self.assertEqual(args[args.index("--threads") + 1], "4")
        self.assertEqual(c["env"], [{"name": "KILN_API_KEY",
                                     "valueFrom": {"secretKeyRef": {"name": "kiln-api", "key": "api-key"}}}])
        self.assertEqual(c["lifecycle"], {"preStop": {"sleep": {"seconds": 5}}})
        hpa = dc.by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]
        self.assertEqual((hpa["minReplicas"], hpa["maxReplicas"]), (2, 8))
        self.assertEqual(hpa["metrics"][0]["pods"], {"metric": {"name": "kiln_queue_duration_us_per_request"},
                                                     "target": {"type": "AverageValue", "averageValue": "20000"}})
        self.assertEqual(hpa["metrics"][1]["resource"]["target"], {"type": "Utilization", "averageUtilization": 80})
        self.assertEqual(hpa["behavior"], {"scaleDown": {"stabilizationWindowSeconds": 300}})
        pod = dc.by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
        models = next(v for v in pod["volumes"] if v["name"] == "models")
        self.assertEqual(models["persistentVolumeClaim"], {"claimName": "models", "readOnly": True})
        self.assertEqual(dc.by_kind(docs, "PodDisruptionBudget")[0]["spec"]["maxUnavailable"], 1)
        sm = dc.by_kind(docs, "ServiceMonitor")[0]
        self.assertEqual(sm["metadata"]["labels"]["release"], "prometheus")
        self.assertEqual(sm["spec"]["endpoints"], [{"port": "http", "path": "/metrics", "interval": "15s"}])

    def test_custom_ports_flow_everywhere(self):
        _, docs = render(VARIANTS["ports"][0])
        c = kiln_container(docs)
        self.assertEqual(c["args"][5:9], ["--http-port", "9080", "--grpc-port", "9081"])
        self.assertEqual({p["name"]: p["containerPort"] for p in c["ports"]}, {"http": 9080, "grpc": 9081})
        ann = dc.by_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(ann["prometheus.io/port"], "9080")
        svc = dc.by_kind(docs, "Service")[0]["spec"]["ports"]
        self.assertEqual([(p["port"], p["targetPort"]) for p in svc], [(80, "http"), (81, "grpc")])

    def test_any_volume_can_hold_the_models(self):
        _, docs = render(VARIANTS["volume"][0])
        c = kiln_container(docs)
        self.assertEqual(c["args"][1:3], ["--model-repository", "/srv/models"])
        pod = dc.by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
        self.assertEqual(next(v for v in pod["volumes"] if v["name"] == "models"),
                         {"name": "models", "nfs": {"server": "nfs.internal", "path": "/exports/models"}})
        self.assertEqual(next(m for m in c["volumeMounts"] if m["name"] == "models")["mountPath"], "/srv/models")

    def test_release_name_prefixes_object_names(self):
        docs = hr.manifests(hr.render_chart(CHART, {}, release_name="vision"))
        self.assertEqual(sorted(d["metadata"]["name"] for d in docs),
                         ["vision-kiln", "vision-kiln", "vision-kiln-models"])

    def test_chart_metadata(self):
        with open(os.path.join(CHART, "Chart.yaml")) as f:
            meta = yaml.safe_load(f)
        self.assertEqual((meta["apiVersion"], meta["name"], meta["type"]), ("v2", "kiln", "application"))
        if OPTIONS.kiln and not OPTIONS.routes_json:
            # The image tag defaults to appVersion, and engines load only in the Kiln that built them.
            out = subprocess.run([OPTIONS.kiln, "--version"], capture_output=True, text=True, timeout=30).stdout.split()
            self.assertEqual(out[-1], meta["appVersion"])

    def test_notes_name_only_server_routes(self):
        rendered, _ = render({"autoscaling": {"enabled": True}})
        notes = rendered["NOTES.txt"]
        paths = re.findall(r"localhost:\d+(/[A-Za-z0-9/_.-]*)", notes)
        self.assertTrue(paths)
        for p in paths:
            self.assertIn(p, dc.get_routes(routes()))
        self.assertIn("kiln_queue_duration_us_per_request", notes)

    def test_adapter_rule_in_the_docs_defines_the_hpa_metric(self):
        metric = chart_values({})["autoscaling"]["queueTime"]["metricName"]
        self.assertEqual(dc.check_adapter_rule(adapter_rules(), metric), [])

    def test_validator_rejects_broken_manifests(self):
        """Each mutation of a valid rendering must be reported, so the checks above can fail."""
        base_overrides, base_expect = VARIANTS["scaled"]
        _, base = render(base_overrides)
        values = chart_values(base_overrides)

        def dep(d):
            return dc.by_kind(d, "Deployment")[0]

        def cont(d):
            return kiln_container(d)

        def hpa(d):
            return dc.by_kind(d, "HorizontalPodAutoscaler")[0]["spec"]

        def arg_set(flag, value):
            def f(d):
                a = cont(d)["args"]
                a[a.index(flag) + 1] = value
            return f

        def drop_flag(flag):
            def f(d):
                a = cont(d)["args"]
                i = a.index(flag)
                del a[i:i + 2]
            return f

        mutations = [
            ("readiness path the server lacks",
             lambda d: cont(d)["readinessProbe"]["httpGet"].update(path="/v2/health/readyz"), "not a GET route"),
            ("liveness on the readiness path", lambda d: cont(d)["livenessProbe"]["httpGet"].update(path=dc.READY_PATH),
             "livenessProbe probes"),
            ("startup probe on the gRPC port", lambda d: cont(d)["startupProbe"]["httpGet"].update(port="grpc"),
             "not the HTTP port"),
            ("probe on a port the container lacks", lambda d: cont(d)["readinessProbe"]["httpGet"].update(port=8080),
             "not a port of the container"),
            ("impatient startup probe", lambda d: cont(d)["startupProbe"].update(failureThreshold=3),
             "less than 300 s"),
            ("no startup probe", lambda d: cont(d).pop("startupProbe"), "no startupProbe"),
            ("server bound to loopback", drop_flag("--host"), "not given --host"),
            ("server bound to one address", arg_set("--host", "127.0.0.1"), "must listen on 0.0.0.0"),
            ("HTTP port differs from containerPort", arg_set("--http-port", "8080"), "http containerPort"),
            ("model repository elsewhere", arg_set("--model-repository", "/data"), "modelRepository.mountPath"),
            ("read-only cache", lambda d: next(m for m in cont(d)["volumeMounts"] if m["name"] == "cache").update(
                readOnly=True), "not a writable mount"),
            ("model volume unmounted", lambda d: cont(d)["volumeMounts"].pop(0), "nothing is mounted"),
            ("Deployment selector off the pod labels",
             lambda d: dep(d)["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "other"}),
             "does not match the pod labels"),
            ("Service selector off the pod labels",
             lambda d: dc.by_kind(d, "Service")[0]["spec"]["selector"].update({"app.kubernetes.io/instance": "x"}),
             "Service kiln: selector"),
            ("Service targets an unknown port",
             lambda d: dc.by_kind(d, "Service")[0]["spec"]["ports"][0].update(targetPort="metrics"),
             "not a port of the kiln container"),
            ("Service ports swapped",
             lambda d: dc.by_kind(d, "Service")[0]["spec"]["ports"][0].update(targetPort="grpc"), "must target"),
            ("scrape port wrong", lambda d: dep(d)["spec"]["template"]["metadata"]["annotations"].update(
                {"prometheus.io/port": "8001"}), "prometheus.io/port"),
            ("scrape path wrong", lambda d: dep(d)["spec"]["template"]["metadata"]["annotations"].update(
                {"prometheus.io/path": "/stats"}), "prometheus.io/path"),
            ("no memory limit", lambda d: cont(d)["resources"]["limits"].pop("memory"),
             "resources.limits has no memory"),
            ("GPU without gpu.enabled", lambda d: cont(d)["resources"]["limits"].update({"nvidia.com/gpu": "1"}),
             "though gpu.enabled is false"),
            ("HPA on another metric",
             lambda d: hpa(d)["metrics"][0]["pods"]["metric"].update(name="requests_per_second"),
             "is not autoscaling.queueTime.metricName"),
            ("HPA on another Deployment", lambda d: hpa(d)["scaleTargetRef"].update(name="other"), "scaleTargetRef"),
            ("replicas fixed beside the HPA", lambda d: dep(d)["spec"].update(replicas=3), "owns them"),
            ("API key in the manifest",
             lambda d: cont(d)["env"].__setitem__(0, {"name": "KILN_API_KEY", "value": "s3cret"}),
             "take it from a Secret"),
            ("object without a name", lambda d: dc.by_kind(d, "Service")[0]["metadata"].pop("name"),
             "no metadata.name"),
            ("not kiln serve", lambda d: cont(d)["args"].__setitem__(0, "run"), "not `kiln serve`"),
        ]
        self.assertEqual(dc.check_chart(base, routes(), values, base_expect), [])
        for what, mutate, expected in mutations:
            with self.subTest(mutation=what):
                docs = copy.deepcopy(base)
                mutate(docs)
                errors = dc.check_chart(docs, routes(), values, base_expect)
                self.assertTrue(any(expected in e for e in errors),
                                "%s: expected %r among %r" % (what, expected, errors))

        # GPU expected but missing; the adapter rule under another name; a route table without the probes' paths.
        _, cpu = render({})
        self.assertTrue(any("has no nvidia.com/gpu" in e for e in dc.check_chart(
            cpu, routes(), chart_values({}), {"gpu": True, "hpa": False, "pvc": True})))
        rules = copy.deepcopy(adapter_rules())
        rules[0]["name"]["as"] = "something_else"
        self.assertTrue(dc.check_adapter_rule(rules, values["autoscaling"]["queueTime"]["metricName"]))
        moved = copy.deepcopy(routes())
        for r in moved["http"]:
            if r["path"] == dc.LIVE_PATH:
                r["path"] = "/healthz"
        self.assertTrue(any("livenessProbe path '/v2/health/live' is not a GET route" in e
                            for e in dc.check_chart(base, moved, values, base_expect)))

    def test_kiln_accepts_the_charts_arguments(self):
        """Every flag the chart passes exists: kiln serve parses them all before --print-routes exits."""
        need_binary(self)
        for name, (overrides, _) in VARIANTS.items():
            with self.subTest(variant=name), tempfile.TemporaryDirectory(prefix="kiln-deploy-") as tmp:
                argv = local_argv(kiln_container(render(overrides)[1]), tmp) + ["--print-routes"]
                p = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                   env=dict(os.environ, KILN_API_KEY="test-key"))
                self.assertEqual(p.returncode, 0, "%s\n%s" % (" ".join(argv), p.stderr))
                self.assertEqual(json.loads(p.stdout)["http"], routes()["http"])

    def test_helm_renders_the_same(self):
        helm = shutil.which("helm")
        if not helm:
            self.skipTest("helm is not on PATH: `helm lint` and the comparison with `helm template` skipped")
        p = subprocess.run([helm, "lint", CHART], capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        for name, (overrides, _) in VARIANTS.items():
            with self.subTest(variant=name), tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
                yaml.safe_dump(overrides, f)
                f.flush()
                p = subprocess.run([helm, "template", "kiln", CHART, "--namespace", "default", "-f", f.name],
                                   capture_output=True, text=True, timeout=120)
                self.assertEqual(p.returncode, 0, p.stderr)
                key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
                theirs = sorted((d for d in yaml.safe_load_all(p.stdout) if d), key=key)
                ours = sorted(render(overrides)[1], key=key)
                self.assertEqual(ours, theirs)


class KServeTest(unittest.TestCase):
    """The ServingRuntimes run kiln serve the way KServe expects, and the examples select them."""

    def test_runtimes_pass_validation(self):
        runtimes = kserve_docs("servingruntime.yaml")
        self.assertEqual([r["metadata"]["name"] for r in runtimes], ["kiln", "kiln-grpc"])
        app_version = hr.load_chart(CHART)[0]["appVersion"]
        for rt in runtimes:
            with self.subTest(runtime=rt["metadata"]["name"]):
                self.assertEqual(dc.check_serving_runtime(rt, routes(), app_version), [])

    def test_default_runtime_is_picked_for_onnx_and_kiln_models(self):
        rt = kserve_docs("servingruntime.yaml")[0]
        formats = {f["name"]: f for f in rt["spec"]["supportedModelFormats"]}
        self.assertTrue(formats["onnx"]["autoSelect"])
        self.assertTrue(formats["kiln"]["autoSelect"])
        self.assertEqual(rt["spec"]["protocolVersions"], ["v2", "grpc-v2"])
        c = rt["spec"]["containers"][0]
        self.assertEqual(c["ports"], [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}])
        self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/v2/health/ready", "port": 8080})

    def test_examples_select_a_runtime(self):
        runtimes = kserve_docs("servingruntime.yaml")
        examples = kserve_docs("inferenceservice-example.yaml")
        self.assertEqual(len(examples), 2)
        for isvc in examples:
            with self.subTest(isvc=isvc["metadata"]["name"]):
                self.assertEqual(dc.check_inference_service(isvc, runtimes), [])

    def test_validator_rejects_broken_runtimes(self):
        runtimes = kserve_docs("servingruntime.yaml")
        app_version = hr.load_chart(CHART)[0]["appVersion"]

        def c(rt):
            return rt["spec"]["containers"][0]

        def arg_set(flag, value):
            def f(rt):
                a = c(rt)["args"]
                a[a.index(flag) + 1] = value
            return f

        mutations = [
            (0, "v1 protocol", lambda rt: rt["spec"]["protocolVersions"].append("v1"), "not served by kiln serve"),
            (0, "HTTP port moved", arg_set("--http-port", "8081"), "KServe's HTTP port is 8080"),
            (0, "declared port off the server", lambda rt: c(rt)["ports"][0].update(containerPort=8081),
             "port http1 is 8081"),
            (0, "repository elsewhere", arg_set("--model-repository", "/models"), "expected '/mnt/models'"),
            (0, "loopback", arg_set("--host", "127.0.0.1"), "must listen on 0.0.0.0"),
            (0, "readiness path wrong", lambda rt: c(rt)["readinessProbe"]["httpGet"].update(path="/ready"),
             "not a GET route"),
            (0, "two ports", lambda rt: c(rt)["ports"].append({"name": "h2c", "containerPort": 9000}),
             "exactly one port"),
            (0, "startup probe", lambda rt: c(rt).update(startupProbe={"httpGet": {"path": dc.READY_PATH}}),
             "refuses startupProbe"),
            (0, "metrics port", lambda rt: rt["spec"]["annotations"].update({"prometheus.kserve.io/port": "9000"}),
             "prometheus.kserve.io/port"),
            (0, "image tag", lambda rt: c(rt).update(image="kiln:0.0.9"), "appVersion"),
            (1, "gRPC runtime on the HTTP port", lambda rt: c(rt)["ports"][0].update(containerPort=8080),
             "port h2c is 8080"),
            (1, "gRPC runtime claiming v2", lambda rt: rt["spec"]["protocolVersions"].append("v2"),
             "must be [grpc-v2]"),
            (1, "HTTP probe on the gRPC port", lambda rt: c(rt).update(
                readinessProbe={"httpGet": {"path": dc.READY_PATH, "port": 9000}}), "routed port is not HTTP"),
        ]
        for index, what, mutate, expected in mutations:
            with self.subTest(mutation=what):
                rt = copy.deepcopy(runtimes[index])
                mutate(rt)
                errors = dc.check_serving_runtime(rt, routes(), app_version)
                self.assertTrue(any(expected in e for e in errors),
                                "%s: expected %r among %r" % (what, expected, errors))
        isvc = copy.deepcopy(kserve_docs("inferenceservice-example.yaml")[1])
        isvc["spec"]["predictor"]["model"]["protocolVersion"] = "v2"
        self.assertTrue(any("no runtime" in e for e in dc.check_inference_service(isvc, runtimes)))
        isvc["spec"]["predictor"]["model"]["runtime"] = "triton"
        self.assertTrue(any("is not one of" in e for e in dc.check_inference_service(isvc, runtimes)))

    def test_kiln_accepts_the_runtimes_arguments(self):
        need_binary(self)
        for rt in kserve_docs("servingruntime.yaml"):
            name = rt["metadata"]["name"]
            with self.subTest(runtime=name), tempfile.TemporaryDirectory(prefix="kiln-deploy-") as tmp:
                argv = local_argv(rt["spec"]["containers"][0], tmp) + ["--print-routes"]
                p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 0, "%s\n%s" % (" ".join(argv), p.stderr))


def write_relu_repository(path):
    """A repository with one model, relu: y = max(x, 0) for x of shape [1, 3], built at load."""
    from onnx import TensorProto, helper, save_model
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    os.makedirs(os.path.join(path, "relu", "1"))
    save_model(model, os.path.join(path, "relu", "1", "model.onnx"))
    with open(os.path.join(path, "relu", "config.pbtxt"), "w") as f:
        f.write('name: "relu"\nmax_batch_size: 0\n')


def read_text(path):
    with open(path) as f:
        return f.read()


def http(method, url, body=None, timeout=10):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, ""


def dockerfile_stages():
    """The Dockerfile's stages: a list of (FROM line, [instructions]), continuation lines joined."""
    with open(DOCKERFILE) as f:
        text = f.read()
    lines, cur = [], ""
    for raw in text.splitlines():
        if raw.strip().startswith("#") and not cur:
            continue
        cur += raw.rstrip("\\").strip() + " " if raw.rstrip().endswith("\\") else raw.strip()
        if not raw.rstrip().endswith("\\"):
            if cur.strip():
                lines.append(cur.strip())
            cur = ""
    stages = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def apt_packages(instructions):
    """The packages of every `apt-get install` in a stage's RUN instructions."""
    pkgs = []
    for ins in instructions:
        if not ins.startswith("RUN "):
            continue
        for part in ins[4:].split("&&"):
            words = part.split()
            if "apt-get" in words and "install" in words:
                pkgs += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return pkgs


def linked_packages(binary):
    """{Debian package: [libraries]} of the shared libraries `ldd binary` resolves."""
    p = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError("ldd %s: %s" % (binary, p.stderr))
    out = {}
    for line in p.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line)
        if not m:
            continue
        lib = m.group(1)
        candidates = [lib, os.path.realpath(lib)]
        if lib.startswith("/lib/"):
            candidates.append("/usr" + lib)
        pkg = None
        for c in candidates:
            q = subprocess.run(["dpkg", "-S", c], capture_output=True, text=True, timeout=60)
            if q.returncode == 0 and q.stdout:
                pkg = q.stdout.split(":", 1)[0].strip()
                break
        out.setdefault(pkg or "?", []).append(lib)
    return out


class DockerfileTest(unittest.TestCase):
    """deploy/docker/Dockerfile builds the image the chart runs: its runtime stage installs every
    library `kiln` links, and its ports, user and folders are the chart's. (Building the image needs
    a Docker daemon and Debian's registry, which the test machine may lack; this checks what can be
    checked without them.)"""

    # What debian:12-slim itself holds (apt and dpkg need them).
    BASE = {"libc6", "libgcc-s1", "libstdc++6"}

    def test_two_stages_on_debian_12(self):
        stages = dockerfile_stages()
        self.assertEqual(len(stages), 2, [s[0] for s in stages])
        self.assertTrue(stages[0][0].startswith("FROM debian:12 AS build"), stages[0][0])
        self.assertEqual(stages[1][0], "FROM debian:12-slim")
        build = " ".join(stages[0][1])
        for flag in ("-DKILN_BUILD_TESTS=OFF", "-DKILN_PYTHON=OFF", "-DKILN_CUDA=OFF", "--target kiln"):
            self.assertIn(flag, build)
        # The build stage's packages are Debian's, a subset of what scripts/setup.sh installs.
        with open(os.path.join(ROOT, "scripts", "setup.sh")) as f:
            setup = f.read()
        for pkg in apt_packages(stages[0][1]):
            self.assertRegex(setup, r"(^|\s)%s(\s|$)" % re.escape(pkg), "%s is not one of setup.sh's packages" % pkg)

    def test_runtime_stage_installs_every_library_kiln_links(self):
        need_binary(self)
        if not shutil.which("dpkg") or not shutil.which("ldd"):
            self.skipTest("needs dpkg and ldd (a Debian machine)")
        runtime = set(apt_packages(dockerfile_stages()[1][1]))
        linked = linked_packages(OPTIONS.kiln)
        self.assertNotIn("?", linked, "libraries no Debian package owns: %s" % linked.get("?"))
        missing = sorted(set(linked) - runtime - self.BASE)
        self.assertEqual(missing, [], "the runtime stage lacks %s (for %s)" % (missing, {m: linked[m] for m in missing}))

    def test_ports_user_and_folders_are_the_charts(self):
        values = chart_values({})
        ins = dockerfile_stages()[1][1]
        expose = [int(p) for i in ins if i.startswith("EXPOSE ") for p in i.split()[1:]]
        self.assertEqual(sorted(expose), sorted([values["server"]["httpPort"], values["server"]["grpcPort"]]))
        users = [i.split()[1] for i in ins if i.startswith("USER ")]
        self.assertEqual(users, [str(values["securityContext"]["runAsUser"])])
        run = " ".join(i for i in ins if i.startswith("RUN "))
        for path in (values["modelRepository"]["mountPath"], values["cache"]["mountPath"]):
            self.assertIn(path, run, "the image does not create %s" % path)
        entry = [json.loads(i[len("ENTRYPOINT "):]) for i in ins if i.startswith("ENTRYPOINT ")]
        self.assertEqual(entry, [["kiln"]])
        # The chart replaces the command line; the image's own default is a working `kiln serve`.
        cmd = [json.loads(i[len("CMD "):]) for i in ins if i.startswith("CMD ")]
        self.assertEqual(len(cmd), 1)
        flags, errors = dc.parse_serve({"name": "image", "command": entry[0], "args": cmd[0]})
        self.assertEqual(errors, [])
        self.assertEqual(flags["--model-repository"], [values["modelRepository"]["mountPath"]])
        self.assertEqual(flags["--cache-dir"], [values["cache"]["mountPath"]])
        self.assertEqual(flags["--http-port"], [str(values["server"]["httpPort"])])
        self.assertEqual(flags["--grpc-port"], [str(values["server"]["grpcPort"])])
        if OPTIONS.kiln and not OPTIONS.routes_json:
            with tempfile.TemporaryDirectory(prefix="kiln-docker-") as tmp:
                argv = local_argv({"name": "image", "command": entry[0], "args": cmd[0]}, tmp) + ["--print-routes"]
                p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 0, "%s\n%s" % (" ".join(argv), p.stderr))


class DockerSmokeTestTest(unittest.TestCase):
    """deploy/docker/smoke-test.sh asks the container only what the server answers: each URL it
    requests is a route of `kiln serve --print-routes` (its model name in place of {model}), with
    the method it uses, on the image's HTTP port."""

    def test_smoke_test_urls_are_server_routes(self):
        with open(os.path.join(ROOT, "deploy", "docker", "smoke-test.sh")) as f:
            script = f.read()
        table = routes()
        known = {(r["method"], r["path"]) for r in table.get("http", [])}
        used = [(line, m) for line in script.splitlines() if "curl " in line
                for m in re.findall(r'"\$url(/[A-Za-z0-9/_.-]*)"', line)]
        self.assertGreaterEqual(len(used), 4, used)
        for line, path in used:
            method = "POST" if " -d " in line else "GET"
            templated = re.sub(r"^/v2/models/tiny_cnn", "/v2/models/{model}", path)
            self.assertIn((method, templated), known, "%s %s is not a server route" % (method, path))
        ports = re.findall(r'-p "127\.0\.0\.1:\$PORT:(\d+)"', script)
        self.assertEqual([int(p) for p in ports], [chart_values({})["server"]["httpPort"]])


class LiveServerTest(unittest.TestCase):
    """kiln serve, started with the chart's arguments, answers the chart's probes and exports the HPA's metric."""

    def test_probes_metrics_and_drain(self):
        need_binary(self)
        _, docs = render({})
        c = kiln_container(docs)
        ann = dc.by_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]
        with tempfile.TemporaryDirectory(prefix="kiln-deploy-") as tmp:
            write_relu_repository(os.path.join(tmp, "models"))
            port_file = os.path.join(tmp, "ports.json")
            argv = local_argv(c, tmp) + ["--port-file", port_file]
            log = open(os.path.join(tmp, "server.log"), "w+")
            server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.time() + 60
                while not os.path.exists(port_file) or not read_text(port_file).strip():
                    self.assertIsNone(server.poll(), "kiln serve exited early: %s" % read_text(log.name))
                    self.assertLess(time.time(), deadline, "no port file after 60 s")
                    time.sleep(0.1)
                time.sleep(0.1)
                port = json.loads(read_text(port_file))["http"]
                base = "http://127.0.0.1:%d" % port

                def probe_status(kind):
                    return http("GET", base + c[kind]["httpGet"]["path"])[0]

                self.assertEqual(probe_status("livenessProbe"), 200)
                # The startup probe's budget, shortened: a one-op model is ready in seconds.
                deadline = time.time() + 120
                while probe_status("startupProbe") != 200:
                    self.assertLess(time.time(), deadline, "not ready after 120 s: %s" % read_text(log.name))
                    time.sleep(0.2)
                self.assertEqual(probe_status("readinessProbe"), 200)

                status, text = http("POST", base + "/v2/models/relu/infer",
                                    {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                                 "data": [1.5, -2, 3]}]})
                self.assertEqual(status, 200, text)
                out = json.loads(text)["outputs"][0]
                self.assertEqual((out["name"], out["shape"], out["data"]), ("y", [1, 3], [1.5, 0, 3]))

                status, metrics = http("GET", base + ann["prometheus.io/path"])
                self.assertEqual(status, 200)
                samples = {}
                for line in metrics.splitlines():
                    if line and not line.startswith("#"):
                        name_labels, _, value = line.rpartition(" ")
                        samples[name_labels] = float(value)

                def sample(family):
                    hits = [v for k, v in samples.items() if k.startswith(family + "{") and 'model="relu"' in k]
                    self.assertEqual(len(hits), 1, "%s for relu in:\n%s" % (family, metrics))
                    return hits[0]

                # The adapter rule divides these two: both must exist per model.
                self.assertEqual(sample("nv_inference_request_success"), 1)
                self.assertGreaterEqual(sample("nv_inference_queue_duration_us"), 0)

                server.send_signal(signal.SIGTERM)
                self.assertEqual(server.wait(timeout=60), 0, read_text(log.name))
            finally:
                if server.poll() is None:
                    server.kill()
                    server.wait()
                log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--kiln", default=os.environ.get("KILN_CLI_PATH"))
    parser.add_argument("--routes-json")
    OPTIONS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
