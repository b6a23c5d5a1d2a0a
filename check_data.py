"""check_data.py: a fast sanity check of a PrepareVLMData dataset, before FineTuneVLM spends GPU time on it.

    python check_data.py                              # the latest successful dataset of your branch
    python check_data.py --run PrepareVLMData/1234
    python check_data.py --branch test.nightly

Checks, without loading an image: both splits non-empty, every example in the chat format with
non-empty tags and an assistant answer that parses as {"tags": [...]}, no photo twice or in both
splits, no held-out photo in the dataset. Prints each problem; exit code 1 on any, else 0.
"""
import argparse
import sys

from phototagger.training import diagnose


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fast sanity check of a PrepareVLMData dataset (exit code 1 on problems).")
    diagnose.add_dataset_arguments(parser)
    args = parser.parse_args(argv)
    dataset = diagnose.load_dataset_or_report(args)
    if dataset is None:
        return 1
    return diagnose.run_check(dataset)


if __name__ == "__main__":
    sys.exit(main())
