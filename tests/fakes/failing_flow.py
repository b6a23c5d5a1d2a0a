"""A flow whose second step fails after printing, for the test of what a failed flow test reports."""
import sys

from metaflow import FlowSpec, step


def load_layer():
    raise RuntimeError("shape '[96, 0]' is invalid for input of size 48")


class FailingFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @step
    def train(self):
        print("loading the base model from /models/tiny")
        print("step log: the layer shape is off", file=sys.stderr)
        load_layer()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FailingFlow()
