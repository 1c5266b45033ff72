"""Bad inventories, by class: each is one of the committed examples with one edit, and the finding it
must end in (code, dotted path; the line is where ``snippet`` sits). ``test_inventory_types`` runs them;
``docs/hardening.md`` lists them with the message each produced (``tests/hardening_doc.py`` writes it,
and a test fails when the committed page differs). A case that names files on the deploying machine (a
proxy's certificate and key) makes them in a scratch folder first; ``{d}`` in its edits is that folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inventory_testlib import EXAMPLES, edit

from llamafleet import tls

LOCAL, SEED = "local.yaml", "seed-cluster.yaml"

RPC_BIND = ("    bind: 127.0.0.1\n    port: 50052\n", "    bind: {}\n    port: 50052\n")
SEED_NVIDIA = '    driver: {kind: nvidia, version: "576.88"}'
SEED_ROCM = "    driver: {kind: rocm, version: 6.4.1}"
LOCAL_INSTALL = "    install_dir: /opt/llamafleet\n"
LOCAL_MODELS = "    models_dir: /opt/llamafleet/models\n"
WIN_INSTALL = "    install_dir: C:\\llamafleet\n"
MODEL_FILE = "      - name: SmolLM2-135M-Instruct.Q4_1.gguf\n"
RELEASE_FILE = "    - file: llama-b11434-bin-ubuntu-x64.tar.gz\n"
SOURCE_FILE = "    file: llama.cpp-b11434.tar.gz\n"
MIRROR = "  mirror: http://127.0.0.1:8765\n"
PROXY_AUTH = "    auth: {token_file: /opt/llamafleet/proxy.token}\n"
DRAFTER_ARGS = '    ctx_size: 2048\n    extra_args: ["--threads", "1"]'
SEED_ARGS = '    extra_args: ["--jinja"]'
CLUSTER = "cluster: local\n"
SEED_CLUSTER = "cluster: seed\n"
LOCAL_MODELS_LIST = "    models: [smollm2, smollm2-slow]\n"
MAC_MINI_END = "    service_manager: launchd\n\n  m2-air"
LOOPBACK_HOST = ("  {}:\n    connection: {{type: ssh, address: 127.0.0.2}}\n    os: linux\n    install_dir: /opt/llamafleet\n"
                 "    models_dir: /opt/llamafleet/models\n    service_manager: supervisord\n")
M2_MACOS = 'M2, vram_gb: 16}\n    memory_gb: 16\n    macos_version: "15.3"'


@dataclass(frozen=True)
class Bad:
    name: str
    kind: str  # the class of mistake, for the docs
    base: str
    edits: tuple[tuple[str, str], ...]
    code: str
    path: str
    snippet: str  # unique text on the line the finding must name
    files: Callable[[Path], None] | None = None  # makes the files its edits name under {d}

    def write(self, folder: Path) -> tuple[Path, str]:
        """The bad inventory as ``folder/cluster.yaml`` (its files made beside it): its path and text."""
        if self.files is not None:
            self.files(folder)
        text = (EXAMPLES / self.base).read_text()
        for old, new in self.edits:
            text = edit(text, old, new.replace("{d}", str(folder)))
        path = folder / "cluster.yaml"
        path.write_text(text)
        return path, text


def _one(name, kind, base, old, new, code, path, snippet=None, files=None):
    return Bad(name, kind, base, ((old, new),), code, path,
               snippet if snippet is not None else new.strip().splitlines()[0], files)


def _pairs(folder: Path) -> None:
    """Proxy certificates for 127.0.0.1 made as the deploy makes its self-signed pair: {d}/pki and
    {d}/other (each key 0600), {d}/loose (its key 0644)."""
    for name in ("pki", "other", "loose"):
        tls.generate_self_signed(tls.LocalPair(folder / name / "cert.pem", folder / name / "key.pem"),
                                 ["127.0.0.1"], "proxy")
    os.chmod(folder / "loose" / "key.pem", 0o644)


def _tls_files(name, cert, key, code, field):
    block = f"    tls:\n      cert_file: {cert}\n      key_file: {key}\n"
    return _one(name, "proxy TLS", LOCAL, PROXY_AUTH, PROXY_AUTH + block, code, f"services.proxy.tls.{field}",
                f"      {field}:", _pairs)


CASES = [
    # --- control characters, in every kind of string field
    _one("newline in an env value", "control character", LOCAL, PROXY_AUTH,
         PROXY_AUTH + '    env: {A: "x\\nExecStartPre=/bin/touch /tmp/pwned"}\n', "LF013", "services.proxy.env.A", "    env: {A:"),
    _one("newline in an extra_args value", "control character", LOCAL, DRAFTER_ARGS,
         '    ctx_size: 2048\n    extra_args: ["--alias", "x\\n[program:x]\\ncommand=/bin/touch /tmp/pwned"]',
         "LF013", "services.drafter.extra_args[1]", '    extra_args: ["--alias"'),
    _one("newline in service_user", "control character", LOCAL, "    service_manager: supervisord\n",
         '    service_manager: supervisord\n    service_user: "llama\\nuser=root"\n', "LF013", "hosts.local.service_user",
         "    service_user:"),
    _one("newline in the ssh user", "control character", SEED, "address: 192.168.86.29, user: harold}",
         'address: 192.168.86.29, user: "harold\\nExecStartPre=/x"}', "LF013", "hosts.akiva.connection.user",
         'address: 192.168.86.29, user: "harold'),
    _one("tab in a quant", "control character", LOCAL, "        size: 98362432\n    quant: Q4_1\n",
         '        size: 98362432\n    quant: "Q4\\t1"\n', "LF013", "models.smollm2.quant", '    quant: "Q4'),
    _one("NUL in a tokenizer", "control character", LOCAL, "    tokenizer: smollm2\n    architecture:\n      family: llama\n      layers: 30\n",
         '    tokenizer: "smol\\0lm2"\n    architecture:\n      family: llama\n      layers: 30\n', "LF013",
         "models.smollm2.tokenizer"),
    _one("NEL (C1) in a GPU model", "control character", SEED, "{vendor: apple, model: M4, vram_gb: 16}",
         '{vendor: apple, model: "M4\\x85Pro", vram_gb: 16}', "LF013", "hosts.mac-mini.gpus[0].model",
         '{vendor: apple, model: "M4'),
    _one("Unicode line separator in a cmake option", "control character", LOCAL, '"-DLLAMA_BUILD_TESTS=OFF"]',
         '"-DLLAMA_BUILD_TESTS=OFF\\u2028-DX=1"]', "LF013", "llama_cpp.source.cmake_options.cpu[2]", "cpu: ["),
    _one("escape character in key_file", "control character", SEED, "address: 192.168.86.29, user: harold}",
         'address: 192.168.86.29, user: harold, key_file: "/k\\x1b[2J"}', "LF013", "hosts.akiva.connection.key_file",
         "address: 192.168.86.29, user: harold, key_file"),
    # --- addresses
    _one("rpc-worker bound to ::0", "address", LOCAL, RPC_BIND[0], RPC_BIND[1].format('"::0"'), "LF014",
         "services.rpc.bind"),
    _one("rpc-worker bound to 0.0.0.0", "address", LOCAL, RPC_BIND[0], RPC_BIND[1].format("0.0.0.0"), "LF014",
         "services.rpc.bind"),
    _one("rpc-worker bound to ::ffff:0.0.0.0", "address", LOCAL, RPC_BIND[0], RPC_BIND[1].format('"::ffff:0.0.0.0"'),
         "LF014", "services.rpc.bind"),
    _one("bind that is not an address", "address", LOCAL, "    bind: 127.0.0.1\n    port: 8080\n",
         "    bind: localhost; touch /tmp/x\n    port: 8080\n", "LF013", "services.proxy.bind"),
    _one("IPv4 address out of range", "address", SEED, "    bind: 192.168.86.41\n", "    bind: 192.168.86.410\n",
         "LF014", "services.m2-drafter.bind"),
    _one("ssh address with a bad label", "address", SEED, "address: 192.168.86.29, user: harold}",
         "address: -gpu.lan, user: harold}", "LF014", "hosts.akiva.connection.address", "address: -gpu.lan"),
    _one("IPv6 address with a zone", "address", SEED, "    os: linux\n    arch: x86_64\n    backend: rocm\n",
         '    os: linux\n    addresses: ["fe80::1%eth0"]\n    arch: x86_64\n    backend: rocm\n', "LF013",
         "hosts.akiva.addresses[0]", '    addresses: ["fe80'),
    # --- driver versions by kind
    _one("shell in an NVIDIA driver version", "driver version", SEED, SEED_NVIDIA,
         "    driver: {kind: nvidia, version: \"576.88'; touch /tmp/pwned; '\"}", "LF013", "hosts.desktop.driver.version",
         "    driver: {kind: nvidia"),
    _one("ROCm-style version for NVIDIA", "driver version", SEED, SEED_NVIDIA,
         '    driver: {kind: nvidia, version: "6.3.1"}', "LF013", "hosts.desktop.driver.version"),
    _one("newline in a ROCm version", "driver version", SEED, SEED_ROCM,
         '    driver: {kind: rocm, version: "6.4.1\\ndeb http://evil/ x main"}', "LF013", "hosts.akiva.driver.version"),
    _one("ROCm version that is a word", "driver version", SEED, SEED_ROCM,
         "    driver: {kind: rocm, version: latest}", "LF013", "hosts.akiva.driver.version"),
    # --- paths per OS
    _one("relative install_dir", "path", LOCAL, LOCAL_INSTALL, "    install_dir: opt/llamafleet\n", "LF013",
         "hosts.local.install_dir"),
    _one("'..' in models_dir", "path", LOCAL, LOCAL_MODELS, "    models_dir: /opt/llamafleet/../../etc\n", "LF014",
         "hosts.local.models_dir"),
    _one("trailing slash in install_dir", "path", LOCAL, LOCAL_INSTALL, "    install_dir: /opt/llamafleet/\n", "LF014",
         "hosts.local.install_dir"),
    _one("home-relative models_dir", "path", LOCAL, LOCAL_MODELS, "    models_dir: ~/models\n", "LF013",
         "hosts.local.models_dir"),
    _one("Windows path on a linux host", "path", LOCAL, LOCAL_INSTALL, "    install_dir: C:\\llamafleet\n", "LF014",
         "hosts.local.install_dir"),
    _one("POSIX path on a windows host", "path", SEED, WIN_INSTALL, "    install_dir: /opt/llamafleet\n", "LF014",
         "hosts.desktop.install_dir", "    install_dir: /opt/llamafleet\n    models_dir: C:"),
    _one("forward slashes on a windows host", "path", SEED, WIN_INSTALL, "    install_dir: C:/llamafleet\n", "LF014",
         "hosts.desktop.install_dir"),
    _one("'..' on a windows host", "path", SEED, WIN_INSTALL, "    install_dir: C:\\llamafleet\\..\\Windows\n", "LF014",
         "hosts.desktop.install_dir"),
    _one("relative token_file", "path", LOCAL, PROXY_AUTH, "    auth: {token_file: proxy.token}\n", "LF013",
         "services.proxy.auth.token_file"),
    _one("'..' in token_file", "path", LOCAL, PROXY_AUTH, "    auth: {token_file: /opt/llamafleet/../../root/.ssh/x}\n",
         "LF014", "services.proxy.auth.token_file"),
    # --- file names
    _one("model file name climbing out", "file name", LOCAL, MODEL_FILE, "      - name: ../../etc/cron.d/x\n", "LF013",
         "models.smollm2.files[0].name"),
    _one("model file name '..'", "file name", LOCAL, MODEL_FILE, "      - name: ..\n", "LF013",
         "models.smollm2.files[0].name"),
    _one("model file name with NUL", "file name", LOCAL, MODEL_FILE, '      - name: "x.gguf\\0.txt"\n', "LF013",
         "models.smollm2.files[0].name"),
    _one("model file name with a backslash", "file name", LOCAL, MODEL_FILE, "      - name: ..\\x.gguf\n", "LF013",
         "models.smollm2.files[0].name"),
    _one("release file with '/'", "file name", LOCAL, RELEASE_FILE, "    - file: ../llama.tar.gz\n", "LF013",
         "llama_cpp.releases[0].file"),
    _one("source file with a drive", "file name", LOCAL, SOURCE_FILE, "    file: C:llama.tar.gz\n", "LF013",
         "llama_cpp.source.file"),
    # --- URLs
    _one("mirror without scheme", "URL", LOCAL, MIRROR, "  mirror: 127.0.0.1:8765\n", "LF013", "llama_cpp.mirror"),
    _one("file: mirror", "URL", LOCAL, MIRROR, "  mirror: file:///srv/mirror\n", "LF013", "llama_cpp.mirror"),
    _one("ftp: mirror", "URL", LOCAL, MIRROR, "  mirror: ftp://127.0.0.1/mirror\n", "LF013", "llama_cpp.mirror"),
    _one("mirror with credentials", "URL", LOCAL, MIRROR, "  mirror: http://user:secret@127.0.0.1:8765\n", "LF013",
         "llama_cpp.mirror"),
    _one("URL with a space", "URL", LOCAL, MIRROR, "  mirror: http://127.0.0.1:8765/a b\n", "LF013", "llama_cpp.mirror"),
    _one("URL with a bad port", "URL", LOCAL, MIRROR, "  mirror: http://127.0.0.1:99999\n", "LF014", "llama_cpp.mirror"),
    _one("URL with port 0", "URL", LOCAL, MIRROR, "  mirror: http://127.0.0.1:0/x\n", "LF014", "llama_cpp.mirror"),
    _one("URL with a broken IPv6 host", "URL", LOCAL, MIRROR, "  mirror: http://[::1/x\n", "LF014", "llama_cpp.mirror"),
    _one("bind with a port", "address", LOCAL, "    bind: 127.0.0.1\n    port: 8080\n",
         "    bind: 127.0.0.1:8080\n    port: 8080\n", "LF014", "services.proxy.bind"),
    _one("model URL without a host", "URL", LOCAL, MODEL_FILE, MODEL_FILE + "        url: http:///x.gguf\n", "LF013",
         "models.smollm2.files[0].url", "        url:"),
    _one("javascript: URL", "URL", LOCAL, MODEL_FILE, MODEL_FILE + "        url: javascript:alert(1)\n", "LF013",
         "models.smollm2.files[0].url", "        url:"),
    # --- environment names
    _one("env key with a space", "env key", LOCAL, PROXY_AUTH, PROXY_AUTH + '    env: {"A B": x}\n', "LF015",
         "services.proxy.env['A B']", "    env:"),
    _one("env key with '='", "env key", LOCAL, PROXY_AUTH, PROXY_AUTH + '    env: {"A=B": x}\n', "LF015",
         "services.proxy.env['A=B']", "    env:"),
    _one("token_env that is not a name", "env key", LOCAL, PROXY_AUTH, "    auth: {token_env: 1TOKEN}\n", "LF013",
         "services.proxy.auth.token_env"),
    # --- numbers and cross-field rules
    _one("negative gpu_layers", "cross-field", SEED, "    gpu_layers: 26\n", "    gpu_layers: -1\n", "LF013",
         "services.target.gpu_layers"),
    _one("gpu_layers above the model's layers", "cross-field", SEED, "    gpu_layers: 20\n", "    gpu_layers: 999\n",
         "LF116", "services.m2-drafter.gpu_layers"),
    _one("n_min above n_max", "cross-field", LOCAL, "n_max: 8,", "n_max: 2, n_min: 3,", "LF014",
         "services.target.native_draft.n_min", "    native_draft: {"),
    _one("usable_gb above vram_gb", "cross-field", SEED, "{vendor: apple, model: M4, vram_gb: 16}",
         "{vendor: apple, model: M4, vram_gb: 16, usable_gb: 20}", "LF014", "hosts.mac-mini.gpus[0].usable_gb"),
    _one("active_experts above experts", "cross-field", SEED, "moe: {experts: 32, active_experts: 4}",
         "moe: {experts: 32, active_experts: 40}", "LF014", "models.gpt-oss-20b.architecture.moe.active_experts"),
    _one("macOS below Metal's minimum", "cross-field", SEED, M2_MACOS, M2_MACOS.replace("15.3", "12.6"), "LF014",
         "hosts.m2-air.macos_version", '    macos_version: "12.6"'),
    _one("macos_version on a linux host", "cross-field", LOCAL, "    service_manager: supervisord\n",
         '    service_manager: supervisord\n    macos_version: "14.1"\n', "LF014", "hosts.local.macos_version",
         "    macos_version:"),
    _one("device name with a space", "device", SEED, "    devices: [CUDA1]\n", '    devices: ["CUDA 1"]\n', "LF013",
         "services.desktop-drafter.devices[0]"),
    # --- YAML
    _one("tag on a mapping", "YAML tag", LOCAL, "    connection: {type: local}\n",
         "    connection: !!python/object:os.system {type: local}\n", "LF008", "hosts.local.connection"),
    _one("tag on a list", "YAML tag", LOCAL, "    models: [smollm2, smollm2-slow]\n",
         "    models: !!python/object/apply:os.system [smollm2, smollm2-slow]\n", "LF008", "hosts.local.models"),
    # --- values a service manager cannot carry unchanged (the render's own escaping decides)
    _one("quote in a systemd install_dir", "unit format", SEED, "    install_dir: /opt/llamafleet\n",
         "    install_dir: /opt/llama'fleet\n", "LF195", "hosts.akiva.install_dir"),
    _one("quotes at the ends of a supervisord env value", "unit format", LOCAL, PROXY_AUTH,
         PROXY_AUTH + "    env: {A: '\"quoted\"'}\n", "LF195", "services.proxy.env.A", "    env:"),
    _one("a ';' after a space in a supervisord env value", "unit format", LOCAL, PROXY_AUTH,
         PROXY_AUTH + "    env: {A: 'x ;y'}\n", "LF195", "services.proxy.env.A", "    env:"),
    _one("%NAME% in a WinSW argument", "unit format", SEED, "    devices: [CUDA1]\n",
         '    devices: [CUDA1]\n    extra_args: ["--alias", "%USERPROFILE%"]\n', "LF195",
         "services.desktop-drafter.extra_args[1]", '    extra_args: ["--alias"'),
    # --- secrets: the servers' API key is the deploy's, from a 0600 file; never typed into a unit or argv
    _one("--api-key in extra_args", "secret", LOCAL, DRAFTER_ARGS,
         '    ctx_size: 2048\n    extra_args: ["--threads", "1", "--api-key", "s3cr3t-key"]', "LF109",
         "services.drafter.extra_args[2]", '    extra_args: ["--threads", "1", "--api-key"'),
    _one("--api-key-file in extra_args", "secret", LOCAL, DRAFTER_ARGS,
         '    ctx_size: 2048\n    extra_args: ["--api-key-file", "/etc/key"]', "LF109",
         "services.drafter.extra_args[0]", '    extra_args: ["--api-key-file"'),
    _one("--api-key=value in extra_args", "secret", LOCAL, DRAFTER_ARGS,
         '    ctx_size: 2048\n    extra_args: ["--api-key=s3cr3t-key"]', "LF109",
         "services.drafter.extra_args[0]", '    extra_args: ["--api-key='),
    _one("--api-key on a build without capability data", "secret", SEED, SEED_ARGS,
         '    extra_args: ["--jinja", "--api-key", "k"]', "LF109", "services.target.extra_args[1]",
         '    extra_args: ["--jinja", "--api-key"'),
    _one("LLAMA_API_KEY in a llama-server's env", "secret", LOCAL, DRAFTER_ARGS,
         DRAFTER_ARGS + "\n    env: {LLAMA_API_KEY: s3cr3t-key}", "LF109", "services.drafter.env.LLAMA_API_KEY",
         "    env: {LLAMA_API_KEY"),
    _one("the key file's variable in a llama-server's env", "secret", LOCAL, DRAFTER_ARGS,
         DRAFTER_ARGS + "\n    env: {LLAMA_ARG_API_KEY_FILE: /etc/key}", "LF109",
         "services.drafter.env.LLAMA_ARG_API_KEY_FILE", "    env: {LLAMA_ARG_API_KEY_FILE"),
    _one("relative server_key_file", "secret", LOCAL, CLUSTER, CLUSTER + "security: {server_key_file: server.key}\n",
         "LF013", "security.server_key_file", "security:"),
    _one("'..' in server_key_file", "secret", LOCAL, CLUSTER,
         CLUSTER + "security: {server_key_file: /home/me/../../etc/shadow}\n", "LF014", "security.server_key_file",
         "security:"),
    _one("the key itself in server_key_file", "secret", LOCAL, CLUSTER,
         CLUSTER + "security: {server_key_file: sk-7f3a9c2e41d84b0e}\n", "LF013", "security.server_key_file",
         "security:"),
    _one("an unknown security setting", "secret", LOCAL, CLUSTER, CLUSTER + "security: {server_key: abc}\n",
         "LF010", "security.server_key", "security:"),
    _one("a user name in a model URL", "secret", LOCAL, MODEL_FILE, MODEL_FILE + "        url: http://me@10.0.0.5/x.gguf\n",
         "LF013", "models.smollm2.files[0].url", "        url:"),
    _one("credentials in a release URL", "secret", LOCAL, RELEASE_FILE,
         RELEASE_FILE + "      url: https://me:pw@example.org/llama.tar.gz\n", "LF013", "llama_cpp.releases[0].url",
         "      url:"),
    # --- placement
    _one("proxy on a windows host", "placement", SEED, "    host: mac-mini\n    bind: 192.168.86.40\n",
         "    host: desktop\n    bind: 192.168.86.36\n", "LF194", "services.proxy.host", "    host: desktop\n    bind: 192.168.86.36\n    port: 8000"),
    # --- firewall: allow entries are IP networks, written canonically; rules the deploy could not write or keep
    _one("a DNS name in firewall.allow", "firewall", LOCAL, CLUSTER, CLUSTER + "firewall: {allow: [gpu-box.lan]}\n",
         "LF013", "firewall.allow[0]", "firewall:"),
    _one("host bits set in firewall.allow", "firewall", LOCAL, CLUSTER, CLUSTER + "firewall: {allow: [10.0.0.5/24]}\n",
         "LF014", "firewall.allow[0]", "firewall:"),
    _one("a prefix longer than the address in firewall.allow", "firewall", LOCAL, CLUSTER,
         CLUSTER + "firewall: {allow: [10.0.0.0/33]}\n", "LF014", "firewall.allow[0]", "firewall:"),
    _one("host bits set in a host's IPv6 allow", "firewall", SEED, "    service_manager: systemd\n",
         '    service_manager: systemd\n    firewall: {allow: ["fd00::1/64"]}\n', "LF014", "hosts.akiva.firewall.allow[0]",
         "    firewall:"),
    _one("firewall.manage that is not a boolean", "firewall", LOCAL, CLUSTER, CLUSTER + "firewall: {manage: sometimes}\n",
         "LF012", "firewall.manage", "firewall:"),
    _one("an unknown firewall setting", "firewall", LOCAL, CLUSTER, CLUSTER + "firewall: {allowed: [10.0.0.0/8]}\n",
         "LF010", "firewall.allowed", "firewall:"),
    _one("firewall managed on a macOS host", "firewall", SEED, MAC_MINI_END,
         "    service_manager: launchd\n    firewall: {manage: true}\n\n  m2-air", "LF173", "hosts.mac-mini.firewall.manage",
         "    firewall:"),
    Bad("a peer known only by a DNS name", "firewall", SEED,
        (("address: 192.168.86.40, user: harold}", "address: mac-mini.lan, user: harold}"),
         ("    bind: 192.168.86.40\n", "    bind: mac-mini.lan\n")), "LF172", "hosts.mac-mini.connection",
        "    connection: {type: ssh, address: mac-mini.lan"),
    Bad("two managed hosts on this machine's loopback", "firewall", LOCAL,
        ((CLUSTER, CLUSTER + "firewall: {manage: true}\n"), (LOCAL_MODELS_LIST, LOCAL_MODELS_LIST + LOOPBACK_HOST.format("spare"))),
        "LF174", "hosts.spare.firewall.manage", "    connection: {type: ssh, address: 127.0.0.2}"),
    # --- the file cache
    _one("cache host that does not exist", "file cache", LOCAL, CLUSTER, CLUSTER + "cache: {host: gpu-box}\n", "LF160",
         "cache.host", "cache:"),
    _one("cache on a Windows host", "file cache", SEED, SEED_CLUSTER, SEED_CLUSTER + "cache: {host: desktop}\n", "LF210",
         "cache.host", "cache:"),
    _one("cache bound to another host's address", "file cache", SEED, SEED_CLUSTER,
         SEED_CLUSTER + "cache: {host: akiva, bind: 192.168.86.99}\n", "LF211", "cache.bind", "cache:"),
    _one("cache on loopback while other hosts fetch", "file cache", SEED, SEED_CLUSTER,
         SEED_CLUSTER + "cache: {host: akiva, bind: 127.0.0.1}\n", "LF212", "cache.bind", "cache:"),
    _one("deployer's cache on loopback while other hosts fetch", "file cache", SEED, SEED_CLUSTER,
         SEED_CLUSTER + "cache: {host: deployer, bind: 127.0.0.1}\n", "LF212", "cache.bind", "cache:"),
    Bad("a host named deployer with cache.host: deployer", "file cache", LOCAL,
        ((CLUSTER, CLUSTER + "cache: {host: deployer, bind: 127.0.0.1}\n"),
         (LOCAL_MODELS_LIST, LOCAL_MODELS_LIST + LOOPBACK_HOST.format("deployer"))), "LF213", "cache.host", "cache:"),
    _one("deployer's cache without bind", "file cache", SEED, SEED_CLUSTER, SEED_CLUSTER + "cache: {host: deployer}\n",
         "LF214", "cache.host", "cache:"),
    _one("cache bound to the wildcard 0.0.0.0", "file cache", SEED, SEED_CLUSTER,
         SEED_CLUSTER + "cache: {host: akiva, bind: 0.0.0.0}\n", "LF014", "cache.bind", "cache:"),
    _one("cache bound to the wildcard ::", "file cache", SEED, SEED_CLUSTER,
         SEED_CLUSTER + 'cache: {host: akiva, bind: "::"}\n', "LF014", "cache.bind", "cache:"),
    _one("cache port taken by a service", "file cache", SEED, SEED_CLUSTER,
         SEED_CLUSTER + "cache: {host: akiva, port: 8080}\n", "LF130", "cache.port", "cache:"),
    _one("relative cache folder", "file cache", SEED, SEED_CLUSTER, SEED_CLUSTER + "cache: {host: akiva, folder: cache}\n",
         "LF013", "cache.folder", "cache:"),
    # --- proxy TLS: one source; the own pair's files read where validate runs
    _one("tls with both sources", "proxy TLS", LOCAL, PROXY_AUTH,
         PROXY_AUTH + "    tls: {self_signed: true, cert_file: /etc/c.pem, key_file: /etc/k.pem}\n", "LF014",
         "services.proxy.tls", "    tls:"),
    _one("tls with neither source", "proxy TLS", LOCAL, PROXY_AUTH, PROXY_AUTH + "    tls: {}\n", "LF014",
         "services.proxy.tls", "    tls:"),
    _one("tls with a certificate and no key", "proxy TLS", LOCAL, PROXY_AUTH,
         PROXY_AUTH + "    tls: {cert_file: /etc/c.pem}\n", "LF014", "services.proxy.tls", "    tls:"),
    _one("tls: true", "proxy TLS", LOCAL, PROXY_AUTH, PROXY_AUTH + "    tls: true\n", "LF012", "services.proxy.tls",
         "    tls:"),
    _one("relative certificate path", "proxy TLS", LOCAL, PROXY_AUTH,
         PROXY_AUTH + "    tls: {cert_file: certs/proxy.crt, key_file: /etc/k.pem}\n", "LF013",
         "services.proxy.tls.cert_file", "    tls:"),
    _tls_files("key file that does not exist", "{d}/pki/cert.pem", "{d}/pki/proxy.key", "LF185", "key_file"),
    _tls_files("key file that cannot be read", "{d}/pki/cert.pem", "/proc/self/mem", "LF185", "key_file"),
    _tls_files("key file that is a folder", "{d}/pki/cert.pem", "{d}/pki", "LF185", "key_file"),
    _tls_files("key file others can read", "{d}/loose/cert.pem", "{d}/loose/key.pem", "LF185", "key_file"),
    _tls_files("the certificate given as the key", "{d}/pki/cert.pem", "{d}/pki/cert.pem", "LF185", "key_file"),
    _tls_files("certificate that does not exist", "{d}/pki/proxy.crt", "{d}/pki/key.pem", "LF185", "cert_file"),
    _tls_files("another pair's key", "{d}/pki/cert.pem", "{d}/other/key.pem", "LF186", "key_file"),
    # --- an rpc-worker's tensor cache is on or off, nothing else
    _one("rpc-worker cache given a folder", "rpc-worker cache", LOCAL, RPC_BIND[0], RPC_BIND[0] + "    cache: /srv/rpc-cache\n",
         "LF012", "services.rpc.cache", "    cache:"),
    _one("rpc-worker cache: yes", "rpc-worker cache", LOCAL, RPC_BIND[0], RPC_BIND[0] + "    cache: yes\n", "LF012",
         "services.rpc.cache", "    cache:"),
    _one("rpc-worker cache: 1", "rpc-worker cache", LOCAL, RPC_BIND[0], RPC_BIND[0] + "    cache: 1\n", "LF012",
         "services.rpc.cache", "    cache:"),
    _one("rpc-worker cache as a mapping", "rpc-worker cache", LOCAL, RPC_BIND[0],
         RPC_BIND[0] + "    cache: {folder: /srv/rpc-cache}\n", "LF012", "services.rpc.cache", "    cache:"),
]
