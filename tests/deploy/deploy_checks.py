# Checks rendered Kubernetes manifests for `kiln serve` against each other and against the server's route table.
"""Validators for the Helm chart's manifests and the KServe runtimes.

Every check returns a list of problems (strings); an empty list means the manifests pass. `routes`
is the JSON object `kiln serve --print-routes` prints:
  {"defaults": {"host", "http_port", "grpc_port"}, "http": [{"method", "path", "use"}, ...],
   "grpc": {"service", "methods": [...]}}
"""

import re

LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
# A startup probe must give the server this long to build and warm up its models before the kubelet
# restarts it. Building an ONNX model into an engine (tactic timing) takes minutes for large models.
MIN_STARTUP_SECONDS = 300
GRPC_SERVICE = "inference.GRPCInferenceService"

# `kiln serve` flags that take no value; every other flag takes one.
SERVE_SWITCHES = {"--no-http", "--no-grpc", "--print-routes", "--no-exit-on-error", "--fast-load"}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ---------------------------------------------------------------------------------------------
# The server's side.


def get_routes(routes):
    """{path} of the GET routes."""
    return {r["path"] for r in routes.get("http", []) if r.get("method") == "GET"}


def route_for_use(routes, use):
    """The GET path the server lists for a use ("liveness", "readiness", "metrics"), or None."""
    for r in routes.get("http", []):
        if r.get("method") == "GET" and r.get("use") == use:
            return r["path"]
    return None


def check_routes_shape(routes):
    """The route table itself has the documented format."""
    errors = []
    d = routes.get("defaults")
    if not isinstance(d, dict) or not all(k in d for k in ("host", "http_port", "grpc_port")):
        errors.append("route table: 'defaults' must hold host, http_port and grpc_port")
    http = routes.get("http")
    if not isinstance(http, list) or not http:
        errors.append("route table: 'http' must be a non-empty list")
    else:
        for r in http:
            if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("method", "path", "use")):
                errors.append("route table: every http route needs method, path and use strings: %r" % (r,))
    grpc = routes.get("grpc")
    if not isinstance(grpc, dict) or not isinstance(grpc.get("methods"), list):
        errors.append("route table: 'grpc' must hold service and methods")
    return errors


def serves_protocol(routes, protocol):
    """Whether the server implements a KServe protocolVersion."""
    if protocol == "v2":
        return any(r.get("method") == "POST" and re.fullmatch(r"/v2/models/\{model\}(/versions/\{version\})?/infer",
                                                              r.get("path", ""))
                   for r in routes.get("http", []))
    if protocol == "grpc-v2":
        g = routes.get("grpc", {})
        return g.get("service") == GRPC_SERVICE and "ModelInfer" in g.get("methods", [])
    return False  # v1 and anything else: Kiln serves the v2 protocol only


# ---------------------------------------------------------------------------------------------
# Containers.


def parse_serve(container):
    """(flags, errors) for a container that runs `kiln serve`: flags maps a flag to its list of values."""
    errors = []
    name = container.get("name", "?")
    command = list(container.get("command") or [])
    args = [str(a) for a in (container.get("args") or [])]
    argv = command + args
    if not argv or argv[0] != "kiln":
        return {}, ["container %s: runs %r, not the kiln binary" % (name, argv[:1])]
    if argv[1:2] != ["serve"]:
        return {}, ["container %s: runs `kiln %s`, not `kiln serve`" % (name, " ".join(argv[1:2]))]
    flags = {}
    i = 2
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            errors.append("container %s: stray argument %r" % (name, a))
            i += 1
            continue
        if "=" in a:
            flag, value = a.split("=", 1)
            i += 1
        elif a in SERVE_SWITCHES:
            flag, value = a, ""
            i += 1
        else:
            if i + 1 >= len(argv):
                errors.append("container %s: %s has no value" % (name, a))
                break
            flag, value = a, argv[i + 1]
            i += 2
        flags.setdefault(flag, []).append(value)
    return flags, errors


def one_flag(flags, flag):
    v = flags.get(flag)
    return v[-1] if v else None


def _int(v):
    try:
        return int(str(v))
    except (TypeError, ValueError):
        return None


def container_ports(container):
    """{port name: containerPort}, and the set of numbers."""
    named = {}
    numbers = set()
    for p in container.get("ports") or []:
        numbers.add(p.get("containerPort"))
        if p.get("name"):
            named[p["name"]] = p.get("containerPort")
    return named, numbers


def resolve_port(container, port):
    """A probe's or Service's target port (a name or a number) as a number, or None."""
    named, numbers = container_ports(container)
    if isinstance(port, str) and not port.isdigit():
        return named.get(port)
    n = _int(port)
    return n if n in numbers else None


def check_probe(container, kind, probe, want_path, routes, http_port, where):
    errors = []
    if not probe:
        return ["%s: no %s" % (where, kind)]
    get = probe.get("httpGet")
    if not get:
        return ["%s: %s is not an httpGet probe" % (where, kind)]
    path = get.get("path")
    if path != want_path:
        errors.append("%s: %s probes %r, expected %r" % (where, kind, path, want_path))
    if path not in get_routes(routes):
        errors.append("%s: %s path %r is not a GET route of kiln serve" % (where, kind, path))
    port = resolve_port(container, get.get("port"))
    if port is None:
        errors.append("%s: %s port %r is not a port of the container" % (where, kind, get.get("port")))
    elif port != http_port:
        errors.append("%s: %s targets port %s, not the HTTP port %s" % (where, kind, port, http_port))
    return errors


def check_serve_command(container, where, want_repository=None):
    """The container runs `kiln serve` listening on every address; returns (flags, errors)."""
    flags, errors = parse_serve(container)
    if errors:
        return flags, ["%s: %s" % (where, e) for e in errors]
    for f in ("--model-repository", "--host", "--http-port", "--grpc-port"):
        if one_flag(flags, f) is None:
            errors.append("%s: kiln serve is not given %s" % (where, f))
    if one_flag(flags, "--host") not in (None, "0.0.0.0"):
        errors.append("%s: --host %s: a pod must listen on 0.0.0.0 (the server's default is 127.0.0.1)"
                      % (where, one_flag(flags, "--host")))
    for f in ("--http-port", "--grpc-port"):
        v = one_flag(flags, f)
        if v is not None and not (_int(v) and 0 < _int(v) < 65536):
            errors.append("%s: %s %r is not a port number" % (where, f, v))
    if "--no-http" in flags:
        errors.append("%s: --no-http leaves the probes and metrics without a server" % where)
    if want_repository is not None and one_flag(flags, "--model-repository") != want_repository:
        errors.append("%s: --model-repository %r, expected %r" % (where, one_flag(flags, "--model-repository"),
                                                                  want_repository))
    for e in container.get("env") or []:
        if e.get("name") == "KILN_API_KEY" and "value" in e:
            errors.append("%s: KILN_API_KEY is written into the manifest; take it from a Secret" % where)
    return flags, errors


# ---------------------------------------------------------------------------------------------
# The Helm chart's manifests.


def by_kind(docs, kind):
    return [d for d in docs if isinstance(d, dict) and d.get("kind") == kind]


def check_documents(docs):
    errors = []
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            errors.append("document %d is not a mapping" % i)
            continue
        for key in ("apiVersion", "kind"):
            if not isinstance(d.get(key), str) or not d.get(key):
                errors.append("document %d (%s) has no %s" % (i, d.get("kind"), key))
        name = (d.get("metadata") or {}).get("name")
        if not isinstance(name, str) or not name:
            errors.append("document %d (%s) has no metadata.name" % (i, d.get("kind")))
        elif not _DNS_LABEL.match(name) or len(name) > 63:
            errors.append("%s %r: metadata.name is not a DNS label" % (d.get("kind"), name))
    return errors


def _subset(small, big):
    if not isinstance(small, dict) or not isinstance(big, dict) or not small:
        return False
    return all(big.get(k) == v for k, v in small.items())


def check_chart(docs, routes, values, expect):
    """Checks the chart's rendered manifests.

    values: the values the chart was rendered with (defaults merged with overrides).
    expect: {"gpu": bool, "hpa": bool, "pvc": bool} — what this rendering must contain.
    """
    errors = check_documents(docs)
    deployments = by_kind(docs, "Deployment")
    if len(deployments) != 1:
        return errors + ["expected one Deployment, found %d" % len(deployments)]
    dep = deployments[0]
    dname = (dep.get("metadata") or {}).get("name")
    if dep.get("apiVersion") != "apps/v1":
        errors.append("Deployment: apiVersion %r, expected apps/v1" % dep.get("apiVersion"))
    spec = dep.get("spec") or {}
    template = spec.get("template") or {}
    pod_labels = (template.get("metadata") or {}).get("labels") or {}
    selector = (spec.get("selector") or {}).get("matchLabels")
    if not _subset(selector, pod_labels):
        errors.append("Deployment: selector %r does not match the pod labels %r" % (selector, pod_labels))
    pod = template.get("spec") or {}
    containers = pod.get("containers") or []
    kiln = [c for c in containers if c.get("name") == "kiln"]
    if len(kiln) != 1:
        return errors + ["Deployment: expected one container named kiln"]
    c = kiln[0]
    where = "Deployment %s container kiln" % dname

    flags, errs = check_serve_command(c, where)
    errors += errs
    named, _ = container_ports(c)
    http_port, grpc_port = named.get("http"), named.get("grpc")
    if http_port is None or grpc_port is None:
        errors.append("%s: needs container ports named http and grpc, has %r" % (where, named))
    if _int(one_flag(flags, "--http-port")) != http_port:
        errors.append("%s: --http-port %s but the http containerPort is %s" % (where, one_flag(flags, "--http-port"),
                                                                              http_port))
    if _int(one_flag(flags, "--grpc-port")) != grpc_port:
        errors.append("%s: --grpc-port %s but the grpc containerPort is %s" % (where, one_flag(flags, "--grpc-port"),
                                                                              grpc_port))
    server = values["server"]
    if http_port != int(server["httpPort"]) or grpc_port != int(server["grpcPort"]):
        errors.append("%s: ports %s/%s differ from values server.httpPort/grpcPort %s/%s" %
                      (where, http_port, grpc_port, server["httpPort"], server["grpcPort"]))

    # Probes: the v2 health endpoints on the HTTP port; startup waits for readiness, generously.
    errors += check_probe(c, "livenessProbe", c.get("livenessProbe"), LIVE_PATH, routes, http_port, where)
    errors += check_probe(c, "readinessProbe", c.get("readinessProbe"), READY_PATH, routes, http_port, where)
    errors += check_probe(c, "startupProbe", c.get("startupProbe"), READY_PATH, routes, http_port, where)
    for kind, use in (("livenessProbe", "liveness"), ("readinessProbe", "readiness"), ("startupProbe", "readiness")):
        listed = route_for_use(routes, use)
        path = ((c.get(kind) or {}).get("httpGet") or {}).get("path")
        if listed is not None and path != listed:
            errors.append("%s: %s probes %r but the server's %s route is %r" % (where, kind, path, use, listed))
    startup = c.get("startupProbe") or {}
    budget = int(startup.get("failureThreshold", 3)) * int(startup.get("periodSeconds", 10))
    if budget < MIN_STARTUP_SECONDS:
        errors.append("%s: startupProbe allows %d s (failureThreshold x periodSeconds) for models to build and warm up,"
                      " less than %d s" % (where, budget, MIN_STARTUP_SECONDS))

    # Resources and GPUs.
    resources = c.get("resources") or {}
    for part in ("requests", "limits"):
        got = resources.get(part) or {}
        for r in ("cpu", "memory"):
            if r not in got:
                errors.append("%s: resources.%s has no %s" % (where, part, r))
        gpu = got.get("nvidia.com/gpu")
        if expect["gpu"]:
            if gpu is None:
                errors.append("%s: gpu.enabled but resources.%s has no nvidia.com/gpu" % (where, part))
            elif _int(gpu) != int(values["gpu"]["count"]):
                errors.append("%s: resources.%s nvidia.com/gpu is %r, gpu.count is %s" % (where, part, gpu,
                                                                                            values["gpu"]["count"]))
        elif gpu is not None:
            errors.append("%s: resources.%s requests nvidia.com/gpu though gpu.enabled is false" % (where, part))

    # The model volume, mounted where --model-repository points; the cache, writable.
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
    repo = one_flag(flags, "--model-repository")
    if repo != values["modelRepository"]["mountPath"]:
        errors.append("%s: --model-repository %r is not modelRepository.mountPath %r" %
                      (where, repo, values["modelRepository"]["mountPath"]))
    mount = mounts.get(repo)
    if mount is None:
        errors.append("%s: nothing is mounted at the model repository %r" % (where, repo))
    elif mount.get("name") not in volumes:
        errors.append("%s: the model repository mount names volume %r, which the pod lacks" %
                      (where, mount.get("name")))
    else:
        vol = volumes[mount["name"]]
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        pvcs = {(p.get("metadata") or {}).get("name") for p in by_kind(docs, "PersistentVolumeClaim")}
        if values["modelRepository"].get("volume"):
            if claim is not None or not any(k != "name" for k in vol):
                errors.append("%s: modelRepository.volume is set but the volume is %r" % (where, vol))
        elif values["modelRepository"].get("existingClaim"):
            if claim != values["modelRepository"]["existingClaim"]:
                errors.append("%s: the model volume claims %r, not existingClaim %r" %
                              (where, claim, values["modelRepository"]["existingClaim"]))
        elif claim not in pvcs:
            errors.append("%s: the model volume claims %r, which the chart does not create" % (where, claim))
    if expect["pvc"] != bool(by_kind(docs, "PersistentVolumeClaim")):
        errors.append("PersistentVolumeClaim: expected %s" % ("one" if expect["pvc"] else "none"))
    cache = one_flag(flags, "--cache-dir")
    if cache is not None:
        m = mounts.get(cache)
        if m is None or m.get("readOnly"):
            errors.append("%s: --cache-dir %r is not a writable mount" % (where, cache))

    # Prometheus scrape annotations: /metrics on the HTTP port.
    ann = (template.get("metadata") or {}).get("annotations") or {}
    if values["metrics"]["podAnnotations"]:
        if ann.get("prometheus.io/scrape") != "true":
            errors.append("%s: prometheus.io/scrape is %r" % (where, ann.get("prometheus.io/scrape")))
        if ann.get("prometheus.io/path") not in get_routes(routes):
            errors.append("%s: prometheus.io/path %r is not a GET route of kiln serve" %
                          (where, ann.get("prometheus.io/path")))
        listed = route_for_use(routes, "metrics")
        if listed is not None and ann.get("prometheus.io/path") != listed:
            errors.append("%s: prometheus.io/path %r, the server's metrics route is %r" %
                          (where, ann.get("prometheus.io/path"), listed))
        if _int(ann.get("prometheus.io/port")) != http_port:
            errors.append("%s: prometheus.io/port %r is not the HTTP port %s" %
                          (where, ann.get("prometheus.io/port"), http_port))

    # The Service: selects the pods, targets the container's named ports.
    services = by_kind(docs, "Service")
    if len(services) != 1:
        errors.append("expected one Service, found %d" % len(services))
    for s in services:
        sw = "Service %s" % (s.get("metadata") or {}).get("name")
        sel = (s.get("spec") or {}).get("selector")
        if not _subset(sel, pod_labels):
            errors.append("%s: selector %r does not match the pod labels %r" % (sw, sel, pod_labels))
        ports = (s.get("spec") or {}).get("ports") or []
        targets = {}
        for p in ports:
            target = resolve_port(c, p.get("targetPort", p.get("port")))
            if target is None:
                errors.append("%s: port %s targets %r, not a port of the kiln container" % (sw, p.get("name"),
                                                                                            p.get("targetPort")))
            targets[p.get("name")] = target
        if targets.get("http") != http_port or targets.get("grpc") != grpc_port:
            errors.append("%s: ports http/grpc must target the container's %s/%s, target %r" %
                          (sw, http_port, grpc_port, targets))

    # Autoscaling on queue time.
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    if expect["hpa"]:
        if len(hpas) != 1:
            errors.append("expected one HorizontalPodAutoscaler, found %d" % len(hpas))
        if "replicas" in spec:
            errors.append("Deployment: sets replicas while the HorizontalPodAutoscaler owns them")
    elif hpas:
        errors.append("HorizontalPodAutoscaler rendered though autoscaling.enabled is false")
    for h in hpas:
        errors += check_hpa(h, dname, values)

    for kind in ("PodDisruptionBudget", "ServiceMonitor"):
        for d in by_kind(docs, kind):
            sel = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels")
            service_labels = (services[0].get("metadata") or {}).get("labels") if services else {}
            target = pod_labels if kind == "PodDisruptionBudget" else service_labels
            if not _subset(sel, target):
                errors.append("%s: selector %r matches nothing the chart creates" % (kind, sel))
    for sm in by_kind(docs, "ServiceMonitor"):
        for e in (sm.get("spec") or {}).get("endpoints") or []:
            if e.get("port") != "http" or e.get("path") not in get_routes(routes):
                errors.append("ServiceMonitor: endpoint %r must scrape a GET route on the http port" % (e,))
    return errors


def check_hpa(h, deployment_name, values):
    errors = []
    w = "HorizontalPodAutoscaler %s" % (h.get("metadata") or {}).get("name")
    if h.get("apiVersion") != "autoscaling/v2":
        errors.append("%s: apiVersion %r, expected autoscaling/v2" % (w, h.get("apiVersion")))
    spec = h.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    if (ref.get("apiVersion"), ref.get("kind"), ref.get("name")) != ("apps/v1", "Deployment", deployment_name):
        errors.append("%s: scaleTargetRef %r is not Deployment %s" % (w, ref, deployment_name))
    lo, hi = spec.get("minReplicas"), spec.get("maxReplicas")
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        errors.append("%s: minReplicas %r / maxReplicas %r" % (w, lo, hi))
    metrics = spec.get("metrics") or []
    queue = [m for m in metrics if m.get("type") == "Pods"]
    want = values["autoscaling"]["queueTime"]["metricName"]
    if len(queue) != 1:
        errors.append("%s: expected one Pods metric (queue time), found %d" % (w, len(queue)))
    for m in queue:
        pods = m.get("pods") or {}
        name = (pods.get("metric") or {}).get("name")
        target = pods.get("target") or {}
        if name != want:
            errors.append("%s: Pods metric %r is not autoscaling.queueTime.metricName %r" % (w, name, want))
        if target.get("type") != "AverageValue" or target.get("averageValue") in (None, ""):
            errors.append("%s: the queue-time target must be an AverageValue, is %r" % (w, target))
    cpu = [m for m in metrics if m.get("type") == "Resource"]
    want_cpu = int(values["autoscaling"]["targetCPUUtilizationPercentage"] or 0)
    if want_cpu:
        ok = len(cpu) == 1 and (cpu[0].get("resource") or {}).get("name") == "cpu" and \
            ((cpu[0].get("resource") or {}).get("target") or {}).get("averageUtilization") == want_cpu
        if not ok:
            errors.append("%s: expected a cpu Utilization target of %d%%, metrics are %r" % (w, want_cpu, metrics))
    elif cpu:
        errors.append("%s: a Resource metric though targetCPUUtilizationPercentage is 0" % w)
    return errors


def check_adapter_rule(rules, metric_name):
    """prometheus-adapter rules (the `rules:` list) define metric_name from nv_inference_queue_duration_us."""
    errors = []
    match = [r for r in rules if ((r.get("name") or {}).get("as")) == metric_name]
    if len(match) != 1:
        return ["prometheus-adapter: expected one rule naming %r, found %d" % (metric_name, len(match))]
    r = match[0]
    if "nv_inference_queue_duration_us" not in r.get("seriesQuery", ""):
        errors.append("prometheus-adapter rule %s: seriesQuery does not select nv_inference_queue_duration_us" %
                      metric_name)
    q = r.get("metricsQuery", "")
    for needle in ("nv_inference_queue_duration_us", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        if needle not in q:
            errors.append("prometheus-adapter rule %s: metricsQuery lacks %s" % (metric_name, needle))
    overrides = (r.get("resources") or {}).get("overrides") or {}
    if (overrides.get("pod") or {}).get("resource") != "pod" or \
        (overrides.get("namespace") or {}).get("resource") != "namespace":
        errors.append("prometheus-adapter rule %s: must map the pod and namespace labels to resources "
                      "(a Pods metric is per pod)" % metric_name)
    return errors


# ---------------------------------------------------------------------------------------------
# KServe.


def check_serving_runtime(rt, routes, app_version):
    errors = check_documents([rt])
    name = (rt.get("metadata") or {}).get("name")
    w = "ServingRuntime %s" % name
    if (rt.get("apiVersion"), rt.get("kind")) != ("serving.kserve.io/v1alpha1", "ServingRuntime"):
        errors.append("%s: expected serving.kserve.io/v1alpha1 ServingRuntime" % w)
    spec = rt.get("spec") or {}
    protocols = spec.get("protocolVersions") or []
    if not protocols:
        errors.append("%s: no protocolVersions" % w)
    for p in protocols:
        if not serves_protocol(routes, p):
            errors.append("%s: protocolVersion %r is not served by kiln serve" % (w, p))
    formats = spec.get("supportedModelFormats") or []
    if not formats:
        errors.append("%s: no supportedModelFormats" % w)
    containers = spec.get("containers") or []
    ks = [c for c in containers if c.get("name") == "kserve-container"]
    if len(ks) != 1:
        return errors + ["%s: expected one container named kserve-container" % w]
    c = ks[0]
    cw = "%s container kserve-container" % w
    flags, errs = check_serve_command(c, cw, want_repository="/mnt/models")
    errors += errs
    http_port, grpc_port = _int(one_flag(flags, "--http-port")), _int(one_flag(flags, "--grpc-port"))
    # KServe routes HTTP to 8080 unless told otherwise, like its Triton runtime; gRPC on 9000.
    if http_port != 8080:
        errors.append("%s: --http-port %s, KServe's HTTP port is 8080" % (cw, http_port))
    if grpc_port != 9000:
        errors.append("%s: --grpc-port %s, expected 9000 as KServe's Triton runtime" % (cw, grpc_port))
    ports = c.get("ports") or []
    if len(ports) != 1:
        errors.append("%s: serverless KServe routes exactly one port; %d declared" % (cw, len(ports)))
    for p in ports:
        if p.get("name") == "http1":
            if p.get("containerPort") != http_port:
                errors.append("%s: port http1 is %s, --http-port is %s" % (cw, p.get("containerPort"), http_port))
            if "v2" not in protocols:
                errors.append("%s: routes HTTP but lists no v2 protocol" % cw)
        elif p.get("name") == "h2c":
            if p.get("containerPort") != grpc_port:
                errors.append("%s: port h2c is %s, --grpc-port is %s" % (cw, p.get("containerPort"), grpc_port))
            if protocols != ["grpc-v2"]:
                errors.append("%s: routes gRPC (h2c) only, so its protocolVersions must be [grpc-v2], are %r" %
                              (cw, protocols))
        else:
            errors.append("%s: port name %r: Knative takes http1 or h2c" % (cw, p.get("name")))
    declared = ports[0].get("containerPort") if len(ports) == 1 else None
    for kind, path in (("readinessProbe", READY_PATH), ("livenessProbe", LIVE_PATH)):
        probe = c.get(kind)
        if probe is None:
            continue
        if declared != http_port:
            errors.append("%s: %s on a runtime whose routed port is not HTTP (Knative probes only that port)" %
                          (cw, kind))
            continue
        errors += check_probe(c, kind, probe, path, routes, http_port, cw)
    if c.get("startupProbe") is not None:
        errors.append("%s: Knative refuses startupProbe" % cw)
    ann = spec.get("annotations") or {}
    if _int(ann.get("prometheus.kserve.io/port")) != http_port:
        errors.append("%s: prometheus.kserve.io/port %r is not --http-port %s" %
                      (w, ann.get("prometheus.kserve.io/port"),
                                                                              http_port))
    if ann.get("prometheus.kserve.io/path") not in get_routes(routes):
        errors.append("%s: prometheus.kserve.io/path %r is not a GET route of kiln serve" %
                      (w, ann.get("prometheus.kserve.io/path")))
    image = c.get("image", "")
    if image.rsplit(":", 1)[-1] != app_version:
        errors.append("%s: image %r is not tagged with the chart's appVersion %s" % (cw, image, app_version))
    res = c.get("resources") or {}
    if not res.get("requests") or not res.get("limits"):
        errors.append("%s: resources need requests and limits" % cw)
    return errors


def check_inference_service(isvc, runtimes):
    """An example InferenceService selects one of the runtimes with a format and protocol it lists."""
    errors = check_documents([isvc])
    w = "InferenceService %s" % (isvc.get("metadata") or {}).get("name")
    if (isvc.get("apiVersion"), isvc.get("kind")) != ("serving.kserve.io/v1beta1", "InferenceService"):
        errors.append("%s: expected serving.kserve.io/v1beta1 InferenceService" % w)
    model = (((isvc.get("spec") or {}).get("predictor") or {}).get("model")) or {}
    fmt = (model.get("modelFormat") or {}).get("name")
    protocol = model.get("protocolVersion", "v1")
    if not model.get("storageUri"):
        errors.append("%s: no storageUri" % w)
    by_name = {r["metadata"]["name"]: r for r in runtimes}
    if model.get("runtime"):
        rt = by_name.get(model["runtime"])
        if rt is None:
            return errors + ["%s: runtime %r is not one of %s" % (w, model["runtime"], sorted(by_name))]
        candidates = [rt]
    else:
        candidates = [r for r in runtimes if any(f.get("name") == fmt and f.get("autoSelect")
                                                 for f in r["spec"].get("supportedModelFormats", []))]
    ok = [r for r in candidates
          if any(f.get("name") == fmt for f in r["spec"].get("supportedModelFormats", []))
          and protocol in r["spec"].get("protocolVersions", [])]
    if not ok:
        errors.append("%s: no runtime among %s serves format %r over %r" %
                      (w, [r["metadata"]["name"] for r in candidates], fmt, protocol))
    return errors
