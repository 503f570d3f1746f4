// `qcow2 check [-f qcow2|raw] [-q] [-U] [-r leaks|all] [--output=human|json] FILE`: QEMU's
// refcount and L1/L2 consistency check; with -r, its repair (then a second check of the result).
// Exit 0 clean, 1 could not check, 2 corruptions, 3 leaks only.

import { parseReadArgs } from '../args';
import { engineFor } from '../engine';
import { checkExitCode, checkHumanText, checkJson, repairedText } from '../render/check';
import { Exit, fail, messageOf, report } from '../report';
import { out, err } from '../io';
import type { CheckResult } from '../../qcow2/ops/check';

export const usage = 'check [-f qcow2|raw] [-q] [-U] [-r leaks|all] [--output=human|json] FILE';
export const description = 'check refcount and L1/L2 consistency (-r: repair leaks, or all); exit 0 clean, 1 could not check, 2 corrupt, 3 leaks';

/** Lines on standard error in one write (a repair may print two for each leaked cluster). */
function errLines(lines: readonly string[]): void {
  if (lines.length) err(lines.join('\n') + '\n');
}

export async function run(argv: string[]): Promise<void> {
  const { file, image, path, display, output: fmt, forceShare, quiet, format, repair } = parseReadArgs(argv, { quiet: true, repair: true });
  if (repair !== undefined && repair !== 'leaks' && repair !== 'all') fail(`Unknown option value for -r (expecting 'leaks' or 'all'): ${repair}`);
  if (repair && forceShare) fail(`Could not open '${file}': force-share=on can only be used with read-only images`);
  const engine = engineFor(image);
  let r: CheckResult;
  let fixed: { leaks: number; corruptions: number } | undefined;
  try {
    // qemu-img opens the image first, then finds that raw has no check (exit 63). A qcow2 image
    // info cannot read (a snapshot table too big) is still checked: check opens it as QEMU's
    // BDRV_O_CHECK does, and reports what it finds.
    const probed = format === 'qcow2' ? 'qcow2' : await engine.info(path, { forceShare, format: format ?? 'probe' }).then((i) => i.format, () => undefined);
    if (probed === 'raw') {
      report('This image format does not support checks');
      throw new Exit(63);
    }
    if (repair) {
      const rep = await engine.repair(path, repair);
      errLines(rep.messages);
      if (rep.failed) {
        // A snapshot table it cannot read stops it as it stops a check; else QEMU's -EIO.
        if (rep.result.failed) report(rep.result.failed.message);
        report(`Check failed: ${rep.result.failed?.cause ?? 'Input/output error'}`);
        throw new Exit(1);
      }
      if (rep.leaksFixed || rep.corruptionsFixed) {
        fixed = { leaks: rep.leaksFixed, corruptions: rep.corruptionsFixed };
        if (fmt === 'human' && !quiet) out(repairedText(fixed.leaks, fixed.corruptions));
      }
      r = rep.result;
      if (!rep.rechecked) r = { ...r, messages: [] };
    } else {
      r = await engine.check(path, { forceShare });
    }
  } catch (e) {
    if (e instanceof Exit) throw e;
    fail(`Could not open '${file}': ${messageOf(e)}`);
  }
  if (r.failed) {
    report(r.failed.message);
    report(`Check failed: ${r.failed.cause}`);
    throw new Exit(1);
  }
  errLines(r.messages);
  const code = checkExitCode(r);
  if (!quiet) out(fmt === 'json' ? JSON.stringify(checkJson(r, display, fixed), null, 4) + '\n' : checkHumanText(r));
  if (code === 1) report('Check failed');
  if (code !== 0) throw new Exit(code);
}
