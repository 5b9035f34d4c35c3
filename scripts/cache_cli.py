"""`blatam cache ...`: try, configure and inspect the KV cache engine locally."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
import yaml
from rich.console import Console

from scripts.cluster_cache_cli import clear_command, load_command, persist_command, shutdown_command

# Every command imports `cache_actors` (torch, transformers: seconds) inside itself, under a spinner,
# so that `blatam --help` and the other commands never pay for it.
cache_app = typer.Typer(help="The KV cache engine in this process (try it, check a config, export the demo model), "
                             "and the KV actors of a running cluster (clear, shutdown, persist, load).", no_args_is_help=True)
console = Console()


def _engine(config_file: Path | None):
    from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine

    config = KVCacheConfig.from_yaml(config_file) if config_file else KVCacheConfig()
    return UltraAdaptiveKVCacheEngine(config)


@cache_app.command("test")
def test_command(
    text: str = typer.Option("Blatam caches the KV of every prompt it has seen. " * 4, "--text"),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=1),
    config_file: Path = typer.Option(None, "--config", exists=True, dir_okay=False, help="YAML KVCacheConfig."),
) -> None:
    """Send the same request twice: the second must hit the cache."""
    with console.status("importing torch and the cache engine, loading the model"):
        engine = _engine(config_file)
    for attempt in ("cold", "warm"):
        result = asyncio.run(engine.process_request({"text": text, "max_new_tokens": max_new_tokens}))
        console.print(f"[bold]{attempt}[/bold]: cached {result['cached_tokens']}/{result['prompt_tokens']} tokens, "
                      f"TTFT {result['ttft_ms']:.1f} ms, total {result['latency_ms']:.1f} ms")
    console.print_json(json.dumps({k: v for k, v in engine.get_stats().items()}))


@cache_app.command("validate")
def validate_command(
    config_file: Path = typer.Option(None, "--config", exists=True, dir_okay=False, help="YAML KVCacheConfig."),
) -> None:
    """Check a configuration (environment variables apply too); exit 1 if it is invalid."""
    with console.status("importing torch and the cache engine, loading the model"):
        report = _engine(config_file).validate_configuration()
    console.print_json(json.dumps(report))
    raise typer.Exit(0 if report["valid"] else 1)


@cache_app.command("config")
def config_command() -> None:
    """Print the effective configuration (defaults + KV_CACHE_* variables) as YAML."""
    with console.status("importing the cache engine (torch)"):
        from cache_actors import KVCacheConfig

    data = json.loads(KVCacheConfig().model_dump_json())
    console.print(yaml.safe_dump({"kv_cache": data}, sort_keys=False), end="")


@cache_app.command("export-demo")
def export_demo_command(path: Path = typer.Argument(..., help="Folder to write.")) -> None:
    """Write the demo model as a Hugging Face folder (for MODEL_PATH or a peer server)."""
    with console.status("importing torch and transformers, writing the demo model"):
        from cache_actors.engine.demo_model import export_demo_model

        out = export_demo_model(path)
    console.print(f"wrote {out}")


# The KV actors of a running cluster (scripts/cluster_cache_cli.py).
cache_app.command("clear")(clear_command)
cache_app.command("shutdown")(shutdown_command)
cache_app.command("persist")(persist_command)
cache_app.command("load")(load_command)
