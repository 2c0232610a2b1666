"""Fine-tuning strategies, one module each; every module is imported when the registry is first used.

Add a strategy by adding a file here::

    from harness.registry import STRATEGIES
    from harness.strategy import Phase, Plan, Strategy

    @STRATEGIES.register("my_strategy")
    class MyStrategy(Strategy):
        description = "one line for `python -m harness list strategies`"
        def search_space(self, trial): ...
        def plan(self, blocks, hp, epochs): ...
"""
