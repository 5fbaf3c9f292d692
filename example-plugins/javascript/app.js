// name-normalizer: a plughost plug-in in JavaScript (componentize-js, or QuickJS
// through componentize-qjs: the same source, see build.sh).
//
// PreOperation Create or Update of any entity with a `name`: trims it, collapses
// inner spaces and capitalizes each word; refuses a name longer than the step's
// configuration (default 100 characters).
import { trace } from 'plughost:plugin/tracing@0.1.0';

export const handler = {
  execute(context) {
    const target = context.inputParameters.find((p) => p.name === 'Target' && p.value.tag === 'entity');
    if (!target) {
      throw { tag: 'permanent', val: 'expected a Target record' };
    }
    const entity = target.value.val;
    const max = Number(context.configuration ?? '100');
    const name = entity.attributes.find((a) => a.name === 'name' && a.value.tag === 'text');
    if (!name) {
      return { inputParameters: [], outputParameters: [], sharedVariables: [] };
    }
    const normalized = name.value.val
      .trim()
      .split(/\s+/)
      .map((w) => w.charAt(0).toUpperCase() + w.slice(1).toLowerCase())
      .join(' ');
    if (normalized.length > max) {
      throw { tag: 'permanent', val: `The name is ${normalized.length} characters long; at most ${max} are allowed` };
    }
    trace(`normalized '${name.value.val}' to '${normalized}'`);
    name.value = { tag: 'text', val: normalized };
    return {
      inputParameters: [{ name: 'Target', value: { tag: 'entity', val: entity } }],
      outputParameters: [],
      sharedVariables: [],
    };
  },
};
