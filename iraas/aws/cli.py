"""`iraas aws deploy | status | doctor | destroy`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "aws",
        help="deploy to AWS (SQS, S3, EC2), show status, tear down",
        description="One CloudFormation stack per deployment: see docs/aws.md.",
    )
    verbs = p.add_subparsers(dest="verb", required=True)
    for verb, text in (
        ("deploy", "create or update the deployment's stack and upload this iraas version"),
        ("status", "the stack's outputs (URL), queue depth and instances"),
        ("doctor", "try, harmlessly, each call a role needs with these credentials; print what is missing"),
        ("destroy", "empty the bucket, terminate the instances, delete the stack"),
    ):
        v = verbs.add_parser(verb, help=text, description=text)
        v.add_argument("--name", required=True, help="deployment name (lowercase letters, digits, -)")
        v.add_argument("--region", help="AWS region (default: the AWS SDK's)")
        v.add_argument("--endpoint-url", help="AWS endpoint override (moto, LocalStack)")
        if verb == "deploy":
            _deploy_options(v)
        if verb == "doctor":
            _doctor_options(v)
        v.set_defaults(func=main)


def _deploy_options(v: argparse.ArgumentParser) -> None:
    v.add_argument("--max-workers", type=int, default=20, help="most worker instances (default 20)")
    v.add_argument("--min-workers", type=int, default=0, help="always-on workers (default 0)")
    v.add_argument(
        "--warm-pool",
        type=int,
        default=0,
        help="scaled-in workers kept stopped, started in seconds instead of launched in a minute (default 0)",
    )
    v.add_argument(
        "--scaler",
        choices=("controller", "asg"),
        default="controller",
        help="who starts and stops workers: iraas's controller (default) or an EC2 Auto Scaling group "
        "tracking the backlog per worker the controller publishes",
    )
    v.add_argument(
        "--target-per-worker",
        type=int,
        default=8,
        help="with --scaler asg: the backlog per worker the group's target tracking holds (default 8)",
    )
    v.add_argument("--instance-type", help="instance type (default c7i.large)")
    v.add_argument("--ami", help="AMI id (default: Amazon Linux 2023 from the public SSM parameter)")
    v.add_argument("--web-port", type=int, default=8000, help="the web tier's port (default 8000)")
    v.add_argument("--wheel", help="the iraas wheel to install (default: built from this source tree)")
    v.add_argument(
        "--lock",
        help="dependency lock with hashes to install from (default: resolved now by pip for the instances)",
    )
    v.add_argument("--model", default="efficientnet-lite0", help="the model workers serve (e.g. faces)")
    v.add_argument("--gallery", default="", help="model faces: a folder per person, enrolled and stored")
    v.add_argument(
        "--allowed-cidr",
        required=True,
        help="who may reach the service, e.g. 203.0.113.0/24 (no default; 0.0.0.0/0 is the whole internet)",
    )
    v.add_argument(
        "--certificate-arn",
        default="",
        help="an ACM certificate: serve HTTPS through a load balancer, the only way to the web instance",
    )
    v.add_argument(
        "--admin-key-file",
        help="the first admin key, made elsewhere (default: a new one, printed once as AdminKey)",
    )


def _doctor_options(v: argparse.ArgumentParser) -> None:
    v.add_argument(
        "--role",
        choices=["web", "worker", "both"],
        default="both",
        help="whose needs to check (default both; on an instance, its own)",
    )
    v.add_argument("--bucket", help="the deployment's bucket (default: the stack's output)")


def main(args: argparse.Namespace) -> int:
    from .deploy import Aws, deploy, destroy, status

    aws = Aws.connect(args.region, args.endpoint_url)
    if args.verb == "deploy":
        out = deploy(
            aws,
            args.name,
            Path(args.wheel) if args.wheel else None,
            lock=Path(args.lock) if args.lock else None,
            model=args.model,
            gallery=args.gallery,
            min_workers=args.min_workers,
            max_workers=args.max_workers,
            warm_pool=args.warm_pool,
            scaler=args.scaler,
            target_per_worker=args.target_per_worker,
            instance_type=args.instance_type,
            ami=args.ami,
            web_port=args.web_port,
            allowed_cidr=args.allowed_cidr,
            certificate_arn=args.certificate_arn,
            admin_key=Path(args.admin_key_file).read_text().strip() if args.admin_key_file else None,
        )
        print(json.dumps(out, indent=1))
        if "AdminKey" in out:
            print("AdminKey is shown this once: keep it (iraas keys create makes more).", file=sys.stderr)
    elif args.verb == "status":
        print(json.dumps(status(aws, args.name), indent=1))
    elif args.verb == "doctor":
        return _doctor(aws, args)
    else:
        for line in destroy(aws, args.name):
            print(f"removed {line}")
    return 0


def _doctor(aws: Any, args: argparse.Namespace) -> int:
    from . import doctor
    from .deploy import outputs

    bucket = args.bucket or outputs(aws, args.name)["Bucket"]
    probes = doctor.Probes(args.name, bucket, aws.s3, aws.sqs, aws.ec2, aws.secrets)
    fine = True
    for role in ("web", "worker") if args.role == "both" else (args.role,):
        text, ok = doctor.report(role, [doctor.run(c) for c in doctor.checks(role, probes)])
        print(text)
        fine = fine and ok
    return 0 if fine else 1
