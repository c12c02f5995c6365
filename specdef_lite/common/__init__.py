"""Layer 0, shared by every layer above: nothing here knows about SpecDef.

| module | idea |
|---|---|
| ``display`` | headless or live (one flag, ``SPECDEF_LITE_HEADLESS``), progress bars, numbers as prose writes them, static figures |
| ``checkpoint`` | files and folders written beside their target and renamed into place; fault points for tests |
"""
