#!/usr/bin/env python3
"""dfast on Ray Serve: `POST /generate` with a JSON body answers with a PNG.

    serve run --app-dir experiment-scripts ray_serve:app model=models/tiny-sd replicas=2
    python experiment-scripts/ray_serve.py --model models/tiny-sd --replicas 2 [--port 8000] [--address HOST:PORT]

    curl -X POST 127.0.0.1:8000/generate -d '{"prompt": "a red fox", "seed": 3, "steps": 20, "size": [512, 512]}'

The body is a JSON object: `prompt` (text, required), `seed` (whole number, default 0), `steps` (default: the
model's), `size` ([width, height], "WxH" or one number for a square; default: the model's),
`negative_prompt`, `guidance`. A body that is not such an object gets a 400 whose text is one sentence saying
what was expected; so does a request the pipeline refuses (a size it cannot make). Each replica holds one
`dfast.Pipeline` and runs one request at a time; Serve queues the others and spreads them over the replicas.
"""

import argparse
import asyncio
import io
import json
import math
import sys
import threading

from ray import serve

import ray_common
from ray_common import positive_int

FIELDS = ("prompt", "seed", "steps", "size", "negative_prompt", "guidance")


class BadRequest(Exception):
    """The one sentence a 400 answers with."""


def whole(body, key, positive):
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0):
        kind = "a positive whole number" if positive else "a whole number, 0 or more"
        raise BadRequest(f"`{key}` must be {kind}, found {json.dumps(value)}")
    return value


def parse_size(value):
    """(width, height) of `size`: [w, h], "WxH" or one number."""
    if isinstance(value, str) and "x" in value:
        parts = value.split("x")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            value = [int(p) for p in parts]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise BadRequest(f"`size` must be [width, height], \"WxH\" or one positive number, found {json.dumps(value)}")
    return value[0], value[1]


def parse_request(data):
    """The pipeline call's arguments from a request body (bytes), or BadRequest."""
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not JSON ({e}); expected an object such as {{\"prompt\": \"a red fox\"}}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object such as {\"prompt\": \"a red fox\"}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown field `{unknown[0]}`; expected {', '.join(FIELDS)}")
    if not isinstance(body.get("prompt"), str):
        raise BadRequest("`prompt` (text) is missing")
    call = {"prompt": body["prompt"], "seed": 0}
    if body.get("seed") is not None:
        call["seed"] = whole(body, "seed", positive=False)
    if body.get("steps") is not None:
        call["num_inference_steps"] = whole(body, "steps", positive=True)
    if body.get("size") is not None:
        call["width"], call["height"] = parse_size(body["size"])
    if body.get("negative_prompt") is not None:
        if not isinstance(body["negative_prompt"], str):
            raise BadRequest("`negative_prompt` must be text")
        call["negative_prompt"] = body["negative_prompt"]
    if body.get("guidance") is not None:
        g = body["guidance"]
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
            raise BadRequest(f"`guidance` must be a number, found {json.dumps(g)}")
        call["guidance_scale"] = float(g)
    return call


@serve.deployment(max_ongoing_requests=8)
class Generate:
    def __init__(self, model, ep="cpu"):
        import dfast

        self.pipe = dfast.Pipeline(model, ep=ep)
        self.lock = threading.Lock()

    def png(self, call):
        from PIL import Image

        with self.lock:  # one pipeline, one run at a time
            image = self.pipe(**call).images[0]
        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    async def __call__(self, request):
        from starlette.responses import PlainTextResponse, Response

        if request.url.path.rstrip("/") != "/generate":
            return PlainTextResponse("not found; POST /generate\n", status_code=404)
        if request.method != "POST":
            return PlainTextResponse("POST a JSON object to /generate\n", status_code=405)
        try:
            call = parse_request(await request.body())
            # In a thread: the event loop keeps answering (health checks, queued requests) meanwhile.
            png = await asyncio.to_thread(self.png, call)
        except BadRequest as e:
            return PlainTextResponse(f"{e}\n", status_code=400)
        except ValueError as e:  # dfast.DfastError: input the pipeline refuses, one sentence
            return PlainTextResponse(f"{e}\n", status_code=400)
        return Response(png, media_type="image/png")


def app(args):
    """`serve run ray_serve:app model=DIR replicas=N [ep=cpu] [replica_cpus=1]`."""
    unknown = sorted(set(args) - {"model", "replicas", "ep", "replica_cpus"})
    if unknown:
        raise ValueError(f"unknown argument `{unknown[0]}`; expected model=, replicas=, ep=, replica_cpus=")
    try:
        replicas = positive_int(str(args.get("replicas", 1)))
        cpus = float(args.get("replica_cpus", 1))
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise ValueError(f"replicas= / replica_cpus=: {e}") from None
    model = ray_common.model_path(args.get("model", "models/tiny-sd"))
    deployment = Generate.options(num_replicas=replicas, ray_actor_options={"num_cpus": cpus})
    return deployment.bind(model, args.get("ep", "cpu"))


if __name__ != "__main__":
    # `serve run` imports this module by name; its replicas get it by value, so a node needs no checkout.
    ray_common.ship(sys.modules[__name__])
    ray_common.ship(ray_common)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/tiny-sd", help="pipeline folder (on every node) or repo id")
    p.add_argument("--replicas", type=positive_int, default=1, help="replicas, each holding one pipeline")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPU cores each replica reserves (default 1)")
    p.add_argument("--ep", default="cpu", help="execution provider (default cpu)")
    p.add_argument("--host", default="127.0.0.1", help="where the HTTP proxy listens (default 127.0.0.1)")
    p.add_argument("--port", type=positive_int, default=8000, help="its port (default 8000)")
    ray_common.add_ray_flags(p)
    args = p.parse_args(argv)
    ray_common.init_ray(args.address, args.object_store_mb)
    serve.start(http_options={"host": args.host, "port": args.port})
    application = app({"model": args.model, "replicas": args.replicas, "ep": args.ep, "replica_cpus": args.replica_cpus})
    serve.run(application, name="dfast", route_prefix="/", blocking=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
