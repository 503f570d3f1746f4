// `qcow2 info [-f qcow2] [-U] [--output=human|json] FILE`: the image's facts from its header,
// printed as qemu-img info prints them. Without -U an image a VM is writing is refused (LOCKED).

import { parseReadArgs } from '../args';
import { cliEngine } from '../engine';
import { infoHumanText, infoJsonText } from '../render/info';
import { fail, messageOf } from '../report';
import { out } from '../io';

export const usage = 'info [-f qcow2] [-U] [--output=human|json] FILE';
export const description = 'show image information (reads the header only; never opens the data file)';

export async function run(argv: string[]): Promise<void> {
  const { file, output: fmt, forceShare } = parseReadArgs(argv);
  let facts;
  try {
    facts = await cliEngine().info(file, { forceShare });
  } catch (e) {
    fail(`Could not open '${file}': ${messageOf(e)}`);
  }
  out(fmt === 'json' ? infoJsonText(facts, file) + '\n' : infoHumanText(facts, file));
}
