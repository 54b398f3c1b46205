"""The trace CSV loader: documented defaults, extra columns ignored, bad rows refused with their line numbers."""

import pytest

from ai_core.errors import TraceInvalid
from ai_core.traces import DEFAULT_JOB_TYPE, load_csv, offered_load, synthetic_trace, write_csv


def test_good_trace_with_extra_and_empty_optional_columns(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("submit_time_s,duration_s,num_gpus,gpu_mem_mb,gpu_util_pct,job_type,user,model\n"
                 "10,600,2,40000,85,training,alice,llama-8b\n"
                 "0,120,1,,,,bob,\n"
                 "\n"
                 "5.5,30,1,1024,20,Inference,carol,\n")
    jobs, errors = load_csv(p)
    assert errors == []
    assert [j.submit_time_s for j in jobs] == [0.0, 5.5, 10.0]  # ordered by submit time
    first = jobs[0]
    assert (first.gpu_mem_mb, first.gpu_util_pct, first.job_type, first.model) == (None, None, DEFAULT_JOB_TYPE, None)
    assert jobs[1].job_type == "inference"
    assert (jobs[2].num_gpus, jobs[2].model, jobs[2].line) == (2, "llama-8b", 2)


def test_bad_rows_are_refused_with_line_numbers(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("submit_time_s,duration_s,num_gpus,gpu_mem_mb\n"
                 "0,60,1,1000\n"
                 "1,-5,1,1000\n"       # line 3: negative duration
                 "2,60,1.5,1000\n"     # line 4: fractional GPUs
                 "x,60,1,1000\n"       # line 5: not a number
                 "4,60,1,1000,extra\n"  # line 6: too many fields
                 "5,60,,1000\n")       # line 7: required field empty
    with pytest.raises(TraceInvalid) as exc:
        load_csv(p)
    errs = exc.value.details["errors"]
    assert [e.split(":")[0] for e in errs] == ["line 3", "line 4", "line 5", "line 6", "line 7"]
    assert "duration_s='-5' must be > 0" in errs[0]
    assert "num_gpus='1.5' is not a whole number" in errs[1]
    assert exc.value.code == "INVALID_REQUEST"
    # Asked to, the loader keeps the good rows and says which it left out.
    jobs, skipped = load_csv(p, skip_bad_rows=True)
    assert len(jobs) == 1 and [e.line for e in skipped] == [3, 4, 5, 6, 7]


def test_missing_required_column_names_it(tmp_path):
    p = tmp_path / "nohdr.csv"
    p.write_text("submit_time_s,duration_s\n0,60\n")
    with pytest.raises(TraceInvalid, match="num_gpus"):
        load_csv(p)


def test_unknown_job_type_is_refused(tmp_path):
    p = tmp_path / "type.csv"
    p.write_text("submit_time_s,duration_s,num_gpus,job_type\n0,60,1,rendering\n")
    with pytest.raises(TraceInvalid, match="line 2: job_type='rendering'"):
        load_csv(p)


def test_synthetic_trace_hits_its_load_and_round_trips(tmp_path):
    jobs = synthetic_trace(300, 16, load=0.8, seed=3)
    assert len(jobs) == 300
    assert offered_load(jobs, 16) == pytest.approx(0.8, rel=0.01)
    back, _ = load_csv(write_csv(tmp_path / "s.csv", jobs))
    assert [(j.num_gpus, j.job_type, j.model) for j in back] == [(j.num_gpus, j.job_type, j.model) for j in jobs]
