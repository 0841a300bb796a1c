"""``robust-ebm data list|verify|download``."""

from __future__ import annotations

import argparse

from ..data import dataset_status, download_dataset, list_datasets, verify_dataset
from .common import emit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data", help="list, verify and download datasets",
        description="Find out which datasets are on this machine, check their files, or fetch "
                    "them.",
        epilog="example:\n  robust-ebm data list\n  robust-ebm data verify fashion_mnist",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(p))
    dsub.required = True
    for name, help_ in (("list", "datasets and where they were found"),
                        ("verify", "check a dataset's files and checksums"),
                        ("download", "fetch the official files and verify their checksums")):
        q = dsub.add_parser(
            name, help=help_, description=help_[0].upper() + help_[1:] + ".",
            epilog="example:\n  robust-ebm data " + name + ("" if name == "list" else " fashion_mnist"),
            formatter_class=argparse.RawDescriptionHelpFormatter)
        if name != "list":
            q.add_argument("name", help="dataset name")
        q.add_argument("--data-dir", default=None, help="folder to search (and download into)")
        q.add_argument("--json", action="store_true")
        if name == "download":
            q.add_argument("--base-url", default=None, help="mirror to use instead of the official host")
        q.set_defaults(func={"list": run_list, "verify": run_verify, "download": run_download}[name])


def run_list(args: argparse.Namespace) -> int:
    rows = [dataset_status(n, args.data_dir) for n in list_datasets()]
    text = "\n".join(
        f"{r['name']:<14} {'found at ' + str(r['location']) if r.get('found') else 'not found'}"
        for r in rows
    )
    emit({"datasets": rows}, args.json, text)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    report = verify_dataset(args.name, args.data_dir)
    ok = bool(report.get("ok"))
    lines = [f"{args.name}: {'OK' if ok else 'FAILED'}"]
    for f in report.get("files", []):
        mark = {True: "ok", False: "FAILED", None: "unverified"}[f.get("ok")]
        lines.append(f"  {mark:10s} {f.get('path')}  {f.get('note', '')}".rstrip())
    for split, info in report.get("splits", {}).items():
        mark = "ok" if info.get("ok") else "FAILED"
        lines.append(f"  {mark:10s} {split}: {info.get('count')} of {info.get('expected')} samples"
                     + (f" ({info['error']})" if info.get("error") else ""))
    emit(report, args.json, "\n".join(lines))
    return 0 if ok else 1


def run_download(args: argparse.Namespace) -> int:
    paths = download_dataset(args.name, dest=args.data_dir, base_url=args.base_url)
    emit({"name": args.name, "files": [str(p) for p in paths]}, args.json,
         "\n".join(f"downloaded and verified {p}" for p in paths))
    return 0
