"""`mmbench data list | info NAME | verify NAME_OR_PATH | import NAME --from PATH`.

Handlers print to stdout and return an exit code; bad input raises DataError/ConfigError, which the
top-level CLI turns into one `error: ...` line and exit code 2.
"""
from __future__ import annotations

import argparse
import json

from mmbench.data import registry


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `data` command; each leaf sets `func(args) -> int` (also reachable via `run_data`)."""
    data = subparsers.add_parser("data", help="list, describe, verify and import datasets")
    sub = data.add_subparsers(dest="data_command", metavar="{list,info,verify,import}")
    sub.required = True

    def leaf(name, func, help_):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--data-dir", default=None,
                       help="folder holding dataset folders (default: $MMBENCH_DATA_DIR, else datasets/)")
        p.set_defaults(func=func)
        return p

    leaf("list", cmd_list, "list the dataset cards and whether their files are present")
    leaf("info", cmd_info, "show a dataset card").add_argument("name")
    p = leaf("verify", cmd_verify, "check files, checksums and validity of a dataset")
    p.add_argument("name_or_path", help="a card name or a dataset directory")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p = leaf("import", cmd_import, "copy a dataset's files into the data directory, verified")
    p.add_argument("name")
    p.add_argument("--from", dest="from_path", required=True, metavar="PATH",
                   help="folder holding the downloaded files")
    return data


def run_data(args) -> int:
    """Dispatch on `args.data_command` (for callers that do not use `args.func`)."""
    return {"list": cmd_list, "info": cmd_info, "verify": cmd_verify,
            "import": cmd_import}[args.data_command](args)


def _status(c: dict, data_dir) -> str:
    if c["layout"] == "synthetic":
        return "built in (generated)"
    try:
        root = registry.card_root(c, data_dir)
    except Exception as exc:  # e.g. recbole not installed
        return f"unavailable ({exc})"
    missing = [f for f in c["files"] if not (root / f).is_file()]
    if c["layout"] == "ml100k":
        return "built in (recbole)" if not missing else "missing (install recbole)"
    return f"present in {root}" if not missing else f"missing {len(missing)}/{len(c['files'])} file(s)"


def cmd_list(args) -> int:
    rows = [("NAME", "LAYOUT", "MODALITIES", "STATUS")]
    for name in registry.list_cards():
        c = registry.card(name)
        mods = ",".join(c["modalities"]) or "-"
        rows.append((name, c["layout"], mods, _status(c, args.data_dir)))
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    for r in rows:
        print("  ".join(r[k].ljust(widths[k]) for k in range(3)) + "  " + r[3])
    return 0


def cmd_info(args) -> int:
    c = registry.card(args.name)
    print(f"{c['name']}: {c.get('title', '')}")
    print(f"layout:      {c['layout']}")
    if c["layout"] != "synthetic":
        print(f"location:    {registry.card_root(c, args.data_dir)}  [{_status(c, args.data_dir)}]")
    for key in ("params", "reader"):
        if c.get(key):
            print(f"{key + ':':<12} {json.dumps(c[key])}")
    print("modalities:")
    for m, spec in c["modalities"].items():
        spec = spec or {}
        where = f" ({spec['file']})" if spec.get("file") else ""
        print(f"  {m}: {spec.get('dim', '?')}-d{where} {spec.get('description', '')}".rstrip())
    for m, why in c["missing_modalities"].items():
        print(f"  {m}: {why}")
    if c["files"]:
        print("files (sha256):")
        for f, s in c["files"].items():
            print(f"  {s}  {f}")
    st = c.get("statistics") or {}
    if st:
        inter = st.get("interactions", {})
        print(f"statistics:  {st.get('n_users')} users x {st.get('n_items')} items; "
              + " / ".join(f"{k} {v:,}" for k, v in inter.items()))
    for key in ("split", "notes", "provenance", "licence"):
        if c.get(key):
            print(f"{key + ':':<12} {c[key]}")
    dl = c.get("download") or {}
    if dl:
        print("download:")
        if dl.get("url"):
            print(f"  {dl['url']}")
        if dl.get("instructions"):
            print(f"  {dl['instructions']}")
    if c["layout"] in registry.FILE_LAYOUTS:
        print(f"  then: mmbench data import {c['name']} --from PATH")
    return 0


def cmd_verify(args) -> int:
    report = registry.verify(args.name_or_path, data_dir=args.data_dir)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    print(f"{report['name']} ({report['layout']}) in {report['directory']}")
    for f, r in report["files"].items():
        mark = "ok " if r["expected"] else "-- "  # '--': no card checksum to compare with
        print(f"  {mark} {r['sha256']}  {f}")
    st = report["statistics"]
    print(f"  {st['n_users']} users x {st['n_items']} items; "
          + " / ".join(f"{k} {v:,}" for k, v in st["interactions"].items()))
    print(f"  {st['users_without_train']} users and {st['items_without_train']} items without training "
          f"interactions; modalities: "
          + (", ".join(f"{m} {d[1]}-d" for m, d in st["modalities"].items()) or "none"))
    if not report["card"] and report["matches_cards"]:
        print(f"  same files as card(s): {', '.join(report['matches_cards'])}")
    if report["missing_modalities"]:
        print(f"  missing modalities: {', '.join(report['missing_modalities'])}")
    print("verified: files, checksums and contents are valid")
    return 0


def cmd_import(args) -> int:
    from mmbench import preflight

    preflight.writable_folder(registry.data_dir(args.data_dir), "--data-dir")
    report = registry.import_dataset(args.name, args.from_path, data_dir=args.data_dir)
    for f in report["copied"]:
        print(f"copied   {f}")
    for f in report["already_present"]:
        print(f"present  {f}")
    print(f"imported {report['name']} into {report['destination']} (checksums verified)")
    return 0
