"""The profiler half: replay traces against a real vLLM engine and record what it did.

Needs the optional extra ``[profile]`` (vllm, torch); nothing here is imported by the simulator.
"""
