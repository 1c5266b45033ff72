"""What the proxy tests share besides fixtures: the token, the rig's sizes and its proxy config.
(A uniquely named module: ``from conftest import ...`` is ambiguous when several test folders run.)"""

from __future__ import annotations

from dataclasses import dataclass

from llamafleet.proxy.background import BackgroundProxy
from llamafleet.proxy.config import ProxyConfig
from llamafleet.rig.servers import RunningProcess

TOKEN = "test-token-0123456789"
DRAFT_MAX = 4
SLOTS = 5


@dataclass
class Rig:
    name: str
    target: RunningProcess
    native: RunningProcess
    drafter: RunningProcess
    proxy: BackgroundProxy

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}


def proxy_config(target: RunningProcess, drafters: list[RunningProcess], native: RunningProcess | None, **extra) -> ProxyConfig:
    return ProxyConfig.model_validate({
        "listen": {"host": "127.0.0.1", "port": 0},
        "model_name": "rig",
        "target": {"name": "target", "url": target.url, "slots": SLOTS},
        "drafters": [{"name": f"drafter{i}", "url": d.url} for i, d in enumerate(drafters)],
        "native": {"name": "native", "url": native.url} if native else None,
        "draft_max": DRAFT_MAX,
        **extra,
    })
