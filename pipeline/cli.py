"""The `novarch-batch` command line: thin click wrappers over plain functions that tests call."""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from urllib.parse import urlsplit

import click

from novarch_batch.pipeline.cli_options import spec_fields, spec_options
from novarch_batch.pipeline.interrupts import is_sigterm, sigterm_as_interrupt, sigterm_received
from novarch_batch.pipeline.spec import SpecError, build_spec, retry_delay_s

EXIT_USAGE, EXIT_RUNTIME = 2, 1


def fail(message: str, code: int) -> None:
    click.echo(f"novarch-batch: error: {message}", err=True)
    sys.exit(code)


def unforeseen(e: Exception) -> str:
    """One line for a failure no command foresaw; NOVARCH_DEBUG=1 shows its traceback instead."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first} (set NOVARCH_DEBUG=1 for the traceback)"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="novarch-batch")
def cli() -> None:
    """Reproducible, distributed batch generation of NovArch images (buildings and houses).

    Jobs run on local Ray or a Ray cluster and land as Parquet shards plus PNG files (or the
    PNGs inside the Parquet rows: the S3 default) in a folder or S3. Start with
    `novarch-batch submit --count 256`.
    """


def jobs_api_address(ctx, param, value: str | None) -> str | None:
    """--cluster: an http(s) address, or a scheme-less HOST:PORT (http); None passes where the option is optional."""
    if value is None:
        return None
    if "://" not in value and "[" not in value and value.count(":") > 1:  # ::1:8265, an IPv6 host without brackets
        host, _, port = value.rpartition(":")
        raise click.BadParameter(f"'{value}': an IPv6 address takes brackets, http://[{host}]:{port}")
    # Ray's JobSubmissionClient reads a scheme-less address as the cluster's GCS (and waits ~40 s on a
    # Jobs API port): HOST:PORT is made an http:// address here; a bare word is refused.
    address = value if "://" in value else f"http://{value}"
    url = urlsplit(address)
    try:
        port_ok = url.port is not None or "://" in value  # http(s):// may leave the port to its scheme
    except ValueError:  # HOST:notaport
        port_ok = False
    if url.scheme.lower() not in ("http", "https") or not url.hostname or not port_ok or any(c.isspace() for c in value):
        raise click.BadParameter(f"'{value}' is not a Ray Jobs API address; use the dashboard's, http://HEAD:8265")
    return address


@cli.command()
@click.option("--count", required=True, metavar="N", help="Number of images to generate (1 to 100,000,000).")
@spec_options
@click.option("--job-id", default=None, metavar="ID", help="Job id (folder name). Default: a hash of the spec, so the same command resumes the same job.")
@click.option("--model", default=None, metavar="NAME|PATH|URL", help="Diffusers-format model folder (safetensors), s3://… to one, or a shipped model: novarch-tiny (v2, the default), novarch-tiny-v1 (to finish jobs begun with it) or novarch-tiny-distilled (the few-step student; --sampler distilled picks it).")
@click.option("--dry-run", is_flag=True, help="Print the job's shape and a time estimate from a short calibration; write nothing.")
@click.option("--cluster", default=None, metavar="URL", callback=jobs_api_address,
              help="Submit through the Ray Jobs API of this cluster (http://HEAD:8265) and return; see --wait.")
@click.option("--wait", is_flag=True, help="With --cluster: follow the job's log to the end and exit with its status.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as one JSON object on stdout.")
def submit(count, job_id, model, dry_run, cluster, wait, as_json, **options):
    """Generate --count images into --out: Parquet shards plus the images (see --format).

    Running the same command again resumes the job: committed shards are skipped, and a
    finished job is left untouched.
    """

    try:
        spec = build_spec(count=count, model=model, job_id=job_id, **spec_fields(options))
        retry_delay_s()  # an environment setting, checked like a flag: here for a local job and one sent to a cluster
    except SpecError as e:
        fail(str(e), EXIT_USAGE)
    if dry_run:
        from novarch_batch.pipeline.estimate import estimate

        shape = estimate(spec)
        click.echo(json.dumps(shape) if as_json else "\n".join(f"{k}: {v}" for k, v in shape.items()))
        return
    if cluster:
        submit_to_cluster(cluster, spec, wait, as_json)
        return
    if wait:
        fail("--wait only applies with --cluster URL", EXIT_USAGE)
    run_job(spec, as_json)


def run_job(spec, as_json: bool) -> None:
    """Run a validated spec on this machine's Ray (or --ray-address) and print its report."""
    if spec.run.ray_address:
        from novarch_batch.pipeline.auth import enable_token_auth

        enable_token_auth()  # before Ray is imported: a running cluster has token auth on
    from novarch_batch.pipeline import driver  # imports Ray: only after the --cluster branch set up its auth mode
    from novarch_batch.pipeline.lease import JobBusy
    from novarch_batch.pipeline.progress import Progress
    from novarch_batch.storage import StorageError

    with sigterm_as_interrupt():  # from the first line to Ray's shutdown
        try:
            progress = Progress()
            progress.note(f"job {spec.job_id}: {spec.count} images in {spec.num_shards} shards -> {spec.output.out.rstrip('/')}/{spec.job_id}")
            # Ray's own notices (a lost node's raylet, say) are printed to stdout from its threads:
            # send them to stderr, so stdout carries the summary alone (--json readers parse it).
            with contextlib.redirect_stdout(sys.stderr):
                report = driver.run(spec, progress)
            print_report(report, as_json)
            driver.release()
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM: 128 + the signal
            if is_sigterm(e):
                stopped("terminated", 143)
            stopped("interrupted", 130)
        except Exception as e:
            # An error raised while a SIGTERM unwound the driver (cleanup of something the signal cut short)
            # would hide it: the signal is what happened, and the resume what to do.
            if sigterm_received() and not os.environ.get("NOVARCH_DEBUG"):
                stopped("terminated", 143)
            if isinstance(e, SpecError):
                fail(str(e), EXIT_USAGE)
            if isinstance(e, (driver.JobFailed, StorageError, JobBusy)):
                fail(str(e), EXIT_RUNTIME)
            raise


class Stopped(SystemExit):
    """Ctrl-C or SIGTERM ended the job; its line is printed and Ray is shut down. The console entry point
    then exits at once (main): with the terminal's Ctrl-C the local Ray's processes die too, and the
    interpreter's own finalisation after that segfaulted now and then (-11 after the line)."""


def stopped(signal_name: str, code: int) -> None:
    from novarch_batch.pipeline import driver

    try:
        driver.release()  # here, not in Ray's exit hook
    except BaseException:  # noqa: BLE001 - a second Ctrl-C, or a cluster already gone: exiting regardless
        pass
    click.echo(f"novarch-batch: error: {signal_name}; committed shards are kept, run the same command to resume", err=True)
    raise Stopped(code)


def print_report(report, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    elif report.already_complete:
        click.echo(f"already complete: {report.count} images in {report.shards} shards at {report.url}; nothing written")
    else:
        click.echo(
            f"done: {report.count} images in {report.shards} shards at {report.url}\n"
            f"  this run sampled {report.shards_sampled} shards ({report.images_sampled} images), skipped {report.shards_skipped} already committed; "
            f"{report.seconds:.1f} s, {report.images_per_second:.1f} images/s, {report.retries} retries; {report.actors or 'no actors needed'}"
            + "".join(f"\n  {what}: {command}" for what, command in next_steps(report.url))
        )


def next_steps(job_url: str) -> list[tuple[str, str]]:
    """Shell commands that look at and read a finished job, quoted so that any path pastes as is."""
    read = f"import pyarrow.dataset as ds; print(ds.dataset({json.dumps(job_url + '/shards')}).to_table().to_pandas().head())"
    return [("look", f"novarch-batch preview {shlex.quote(job_url)} --out grid.png"), ("read", f"python -c {shlex.quote(read)}")]


@cli.command("run-spec", hidden=True)
@click.argument("spec_json")
def run_spec(spec_json):
    """Run the JobSpec given as JSON: what `submit --cluster` starts on the cluster's head, so
    the job there is the very spec validated on the laptop (never flags parsed twice)."""
    from novarch_batch.pipeline.spec import SpecError, check_spec
    from novarch_batch.workers.spec import JobSpec

    try:
        spec = JobSpec.from_dict(json.loads(spec_json))
    except (ValueError, TypeError, AttributeError) as e:  # AttributeError: JSON that is no object ([], null, "x")
        fail(f"run-spec: not a JobSpec ({e}); submit jobs with `novarch-batch submit --cluster URL`", EXIT_USAGE)
    try:
        check_spec(spec)
    except SpecError as e:
        fail(f"run-spec: {e}; submit jobs with `novarch-batch submit --cluster URL`", EXIT_USAGE)
    run_job(spec, as_json=True)


def submit_to_cluster(address: str, spec, wait: bool, as_json: bool) -> None:
    from novarch_batch.pipeline import jobs
    from novarch_batch.storage import join

    problem = jobs.refusal(spec)
    if problem:
        fail(problem, EXIT_USAGE)
    output_url = join(spec.output.out, spec.job_id)
    try:
        submission = jobs.submit(address, spec, output_url)
    except jobs.ClusterError as e:
        fail(str(e), EXIT_RUNTIME)
    if as_json and not wait:
        click.echo(json.dumps({"submission_id": submission.submission_id, "job_id": spec.job_id, "output": output_url}))
    else:
        click.echo(f"submitted {submission.submission_id} to {address}\n  output: {output_url}\n"
                   f"  follow: novarch-batch jobs logs {submission.submission_id} --follow --cluster {address}", err=wait)
    if wait:
        try:
            status = jobs.follow(address, submission.submission_id, lambda text: click.echo(text))
        except jobs.ClusterError as e:
            fail(f"{e}; the job goes on: novarch-batch jobs logs {submission.submission_id} --follow --cluster {address}", EXIT_RUNTIME)
        click.echo(f"job {submission.submission_id}: {status}", err=True)
        sys.exit(0 if status == "SUCCEEDED" else EXIT_RUNTIME)


@cli.group("jobs")
def jobs_group() -> None:
    """List, inspect, follow and stop jobs on a Ray cluster (Ray Jobs API)."""


cluster_option = click.option("--cluster", required=True, metavar="URL", callback=jobs_api_address,
                              help="Ray Jobs API address, e.g. http://HEAD:8265.")


def _jobs_client(address: str):
    from novarch_batch.pipeline import jobs

    try:
        return jobs.client(address)
    except jobs.ClusterError as e:
        fail(str(e), EXIT_RUNTIME)


def _ask(cluster: str, submission_id: str, request):
    from novarch_batch.pipeline import jobs

    try:
        return jobs.ask(cluster, submission_id, request)
    except jobs.ClusterError as e:
        fail(str(e), EXIT_RUNTIME)


@jobs_group.command("list")
@cluster_option
def jobs_list(cluster):
    """Every submission on the cluster, newest first."""
    details = sorted(_jobs_client(cluster).list_jobs(), key=lambda d: d.start_time or 0, reverse=True)
    for d in details:
        click.echo(f"{d.submission_id}\t{d.status}\t{(d.metadata or {}).get('output', '')}")


@jobs_group.command("status")
@click.argument("submission_id")
@cluster_option
def jobs_status(submission_id, cluster):
    """One submission's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    info = _ask(cluster, submission_id, lambda client: client.get_job_info(submission_id))
    click.echo(f"{submission_id}: {info.status}" + (f" ({info.message})" if info.message else ""))


@jobs_group.command("logs")
@click.argument("submission_id")
@cluster_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def jobs_logs(submission_id, cluster, follow):
    """The job driver's log."""
    from novarch_batch.pipeline import jobs

    if follow:
        try:
            status = jobs.follow(cluster, submission_id, click.echo)
        except jobs.ClusterError as e:
            fail(str(e), EXIT_RUNTIME)
        sys.exit(0 if status == "SUCCEEDED" else EXIT_RUNTIME)
    click.echo(_ask(cluster, submission_id, lambda client: client.get_job_logs(submission_id)), nl=False)


@jobs_group.command("stop")
@click.argument("submission_id")
@cluster_option
def jobs_stop(submission_id, cluster):
    """Stop a running submission; committed shards stay and a re-submit resumes."""
    stopped = _ask(cluster, submission_id, lambda client: client.stop_job(submission_id))
    click.echo(f"{submission_id}: {'stop requested' if stopped else 'already finished'}")


@cli.command()
@click.argument("job_url")
@click.option("--full", is_flag=True, help="Re-hash every image (default: a random sample of 64).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def verify(job_url, full, as_json):
    """Check a job, finished or not: _SUCCESS, row count, ids unique and complete, shard and image checksums, schema, stray files.

    JOB_URL is the job folder, <out>/<job_id>. Exits 1 and lists the problems if any.
    """
    from novarch_batch.storage import StorageError
    from novarch_batch.pipeline.verify import verify as run_verify

    try:
        report = run_verify(job_url, full=full)
    except StorageError as e:
        fail(str(e), EXIT_RUNTIME)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        shown = f", the first {len(report.problems)} below" if report.problem_count > len(report.problems) else ""
        verdict = "OK" if report.ok else f"FAILED ({report.problem_count} problem(s){shown})"
        click.echo(f"{verdict}: {report.rows}/{report.expected_rows} rows, {report.shards}/{report.expected_shards} shards, "
                   f"{report.images_checked} image checksum(s) checked at {report.url}")
        for problem in report.problems:
            click.echo(f"  - {problem}")
        if not report.ok:
            click.echo(f"  to repair: {report.repair}")
    sys.exit(0 if report.ok else EXIT_RUNTIME)


@cli.command()
@click.argument("job_url")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def status(job_url, as_json):
    """Shards committed of planned, images, complete or not (also for a running or interrupted job)."""
    from novarch_batch.pipeline.status import status as run_status
    from novarch_batch.storage import StorageError

    try:
        report = run_status(job_url)
    except StorageError as e:
        fail(str(e), EXIT_RUNTIME)
    click.echo(json.dumps(report.to_dict()) if as_json else report.text())
    if report.finished and not report.complete:
        sys.exit(EXIT_RUNTIME)  # damaged since it finished: a script must not take it for done


from novarch_batch.pipeline.cli_model import evaluate, explain, preview  # noqa: E402  (commands of their own modules)
from novarch_batch.pipeline.cli_storage import storage  # noqa: E402

for command in (storage, evaluate, preview, explain):
    cli.add_command(command)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def train(ctx):
    """Train NovArch-tiny, from scratch or on from a model folder (`--init-from`); `novarch-batch train --help` has its flags, MODEL.md the shipped runs."""
    from novarch_batch.training.train import main as train_main  # imported here: diffusers' import costs every other command ~2 s

    train_main.main(args=ctx.args, prog_name="novarch-batch train", standalone_mode=False)  # its errors and Ctrl-C reach main()


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def distill(ctx):
    """Distil NovArch v2 into the few-step student that --sampler distilled samples (`novarch-batch distill --help`; MODEL.md)."""
    from novarch_batch.training.distill import main as distill_main  # imported here, as train: diffusers costs ~2 s

    distill_main.main(args=ctx.args, prog_name="novarch-batch distill", standalone_mode=False)  # its errors and Ctrl-C reach main()


def main() -> None:
    """Console entry point: usage errors become one line and exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except Stopped as e:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(e.code)
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:  # bare `novarch-batch`: show help
            click.echo(e.ctx.get_help())
            sys.exit(0)
        fail(e.format_message(), EXIT_USAGE)
    except click.ClickException as e:  # a command's own one-line refusal
        fail(e.format_message(), e.exit_code)
    except click.Abort:
        fail("aborted", 130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as e:  # whatever the command, a user sees one line, not a traceback
        if os.environ.get("NOVARCH_DEBUG"):
            raise
        fail(unforeseen(e), EXIT_RUNTIME)


if __name__ == "__main__":
    main()
