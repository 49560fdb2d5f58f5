import time, os
from gbatch_flows.emulator import EmulatorConfig, run_emulator
from .harness import cli_args, TaskDir

def test_timing(forkserver, tmp_path, figures):
    import multiprocessing.forkserver as fsv
    with run_emulator(EmulatorConfig(batch_duration=0.2)) as emu:
        td = TaskDir("local", str(tmp_path / "t"))
        argv = cli_args(td.task_dir, emu.base_url, 300)
        run = forkserver.start(argv, tmp_path / "log"); run.finish()
        pid = fsv._forkserver._forkserver_pid
        print([l for l in open(f"/proc/{pid}/status") if "VmRSS" in l]); print(open(f"/proc/{pid}/environ").read().replace("\0", " ")[:3000])
        import sys; print(sys.path[:5])
        assert 0
