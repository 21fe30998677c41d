"""The README's result tables, rewritten from the committed records (never typed by hand).

A table lives between `<!-- results:NAME -->` and `<!-- /results:NAME -->` in the README;
`sync` replaces each such block with the table built from `results/` by the same code as
`membench report` and `membench figures`. `membench readme --check` (and a test) fail when
a block differs from what the records give.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from membench.errors import MembenchError


def _table1(results: Path) -> str:
    from membench.cells import distinct
    from membench.report import DEFAULT_REFERENCE, grid, is_paper_table, load_reference, summarise
    from membench.store import ResultsStore
    from tabulate import tabulate

    records = distinct([r for r in ResultsStore(results / "table1").records() if r["task"]["kind"] == "binary"])[0]
    if not records:
        raise MembenchError(f"{results}/table1 holds no finished run; run `make table1` (or give --results)")
    summary = summarise(records)
    paper_rows = summary[[is_paper_table(t) for t in summary["table"]]]
    if paper_rows.empty:
        raise MembenchError(f"{results}/table1 holds no run of Table 1's task and budget")
    cells, headers = grid(paper_rows, load_reference(DEFAULT_REFERENCE))
    return tabulate(cells, headers=headers, tablefmt="github")


def _fig3(dataset: str) -> Callable[[Path], str]:
    def build(results: Path) -> str:
        from membench.figure3 import DEFAULT_REFERENCE, dataset_table, image_records, load_reference, summarise

        summary = summarise(image_records(results / "fig3"), load_reference(DEFAULT_REFERENCE))
        if summary.empty or dataset not in set(summary["dataset"]):
            raise MembenchError(f"{results}/fig3 holds no {dataset} run; run `make figures` (or give --results)")
        return dataset_table(summary[summary.dataset == dataset])

    return build


BLOCKS: dict[str, Callable[[Path], str]] = {
    "table1": _table1,
    "fig3-omniglot": _fig3("omniglot"),
    "fig3-cifar10": _fig3("cifar10"),
}


def sync(readme: Path, results: Path, write: bool = True) -> list[str]:
    """Rebuild every marked block of `readme` from `results`; return the names of blocks that changed."""
    readme, results = Path(readme), Path(results)
    if not readme.exists():
        raise MembenchError(f"{readme} does not exist; give the README with --file")
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MembenchError(f"{readme} is not readable UTF-8 text ({type(exc).__name__}); give the README with "
                            f"--file") from None
    stale = []
    for name, build in BLOCKS.items():
        pattern = re.compile(rf"(<!-- results:{name} -->\n)(.*?)(<!-- /results:{name} -->)", re.S)
        match = pattern.search(text)
        if not match:
            raise MembenchError(f"{readme} has no <!-- results:{name} --> ... <!-- /results:{name} --> block")
        if text.count(f"<!-- results:{name} -->") > 1:
            raise MembenchError(f"{readme} has more than one <!-- results:{name} --> block; keep one (the others "
                                "would go stale unchecked)")
        table = build(results) + "\n"
        if match.group(2) != table:
            stale.append(name)
            text = text[:match.start(2)] + table + text[match.end(2):]
    if write and stale:
        from membench.store import write_text_atomic

        write_text_atomic(readme, text)
    return stale
