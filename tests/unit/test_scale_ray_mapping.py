"""labkit's ScaleConfig/RouterConfig as Ray Serve deployment options (no ray needed)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from labkit.config import RouterConfig, ScaleConfig
from labkit.scale.ray_backend import ray_autoscaling_config, ray_deployment_options

pytestmark = pytest.mark.unit


def test_scale_config_maps_onto_ray_serve_autoscaling_config():
    scale = ScaleConfig(min_replicas=2, max_replicas=5, target_ongoing_requests=3, upscale_delay_s=4,
                        downscale_delay_s=20, interval_s=0.5)
    assert ray_autoscaling_config(scale) == {
        "min_replicas": 2, "initial_replicas": 2, "max_replicas": 5, "target_ongoing_requests": 3,
        "upscale_delay_s": 4, "downscale_delay_s": 20, "metrics_interval_s": 0.5, "look_back_period_s": 2.0}


def test_router_limit_and_threads_become_deployment_options():
    options = ray_deployment_options(ScaleConfig(max_replicas=2, threads_per_replica=3),
                                     RouterConfig(max_outstanding_per_replica=16))
    assert options["max_ongoing_requests"] == 16
    assert options["ray_actor_options"]["num_cpus"] == 3
    assert options["ray_actor_options"]["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "3"


def test_labkit_up_backend_ray_without_ray_is_one_line_naming_the_extra():
    # ray hidden (a None in sys.modules makes it uninstalled to find_spec and import), since make test installs it
    hide_ray = "import sys; sys.modules['ray'] = None; from labkit.cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", hide_ray, "up", "--backend", "ray"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "'ray' extra" in done.stderr and "Traceback" not in done.stderr
