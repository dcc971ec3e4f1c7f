"""How an app loads and calls each mobile and Apple artifact, for its MODEL_CARD.md: Kotlin on Android, Swift on
iOS. tests/test_mediapipe.py runs the Python call that mirrors each (MediaPipe's TextEmbedder with the same
normalisation; LiteRT's signature runner on the tokenizer's ids)."""

from __future__ import annotations

from converters.mediapipe.runner import app_normalization
from converters.mediapipe.tokenizer import NORMALIZATION
from core.manifest import Manifest

# The app-side text normalisation (converters.mediapipe.tokenizer.normalize_for_mediapipe), step for step.
KOTLIN_IMPORTS = ("import java.text.Normalizer",)
KOTLIN_NORMALIZE = """\
// What the model's own (Hugging Face, uncased BERT) tokenizer does and MediaPipe's does not.
fun normalizeForModel(text: String): String {
    val kept = StringBuilder()
    text.codePoints().forEach { cp ->
        val type = Character.getType(cp)
        when {
            cp == 0x09 || cp == 0x0A || cp == 0x0D -> kept.append(' ')
            cp == 0xFFFD || type == Character.CONTROL.toInt() || type == Character.FORMAT.toInt() ||
                type == Character.PRIVATE_USE.toInt() || type == Character.SURROGATE.toInt() ||
                type == Character.UNASSIGNED.toInt() -> {}
            Character.isSpaceChar(cp) -> kept.append(' ')
            isCjk(cp) -> kept.append(' ').appendCodePoint(cp).append(' ')
            else -> kept.appendCodePoint(cp)
        }
    }
    // Lowercased one code point at a time, as the model's tokenizer does (String.lowercase would make a
    // word-final capital sigma a final sigma, another token).
    val result = StringBuilder()
    Normalizer.normalize(kept, Normalizer.Form.NFD).codePoints().forEach { cp ->
        if (Character.getType(cp) != Character.NON_SPACING_MARK.toInt()) {
            result.appendCodePoint(Character.toLowerCase(cp))
        }
    }
    return result.toString()
}

fun isCjk(cp: Int) = cp in 0x4E00..0x9FFF || cp in 0x3400..0x4DBF || cp in 0x20000..0x2A6DF ||
    cp in 0x2A700..0x2B81F || cp in 0x2B920..0x2CEAF || cp in 0xF900..0xFAFF || cp in 0x2F800..0x2FA1F"""

SWIFT_NORMALIZE = """\
// What the model's own (Hugging Face, uncased BERT) tokenizer does and MediaPipe's does not.
func normalizeForModel(_ text: String) -> String {
    var kept = String.UnicodeScalarView()
    for scalar in text.unicodeScalars {
        switch scalar.properties.generalCategory {
        case .control, .format, .privateUse, .surrogate, .unassigned:
            if scalar == "\\t" || scalar == "\\n" || scalar == "\\r" { kept.append(" ") }
        case .spaceSeparator, .lineSeparator, .paragraphSeparator:
            kept.append(" ")
        default:
            if scalar.value == 0xFFFD { continue }
            if isCJK(scalar.value) {
                kept.append(" "); kept.append(scalar); kept.append(" ")
            } else {
                kept.append(scalar)
            }
        }
    }
    // Lowercased one scalar at a time, as the model's tokenizer does.
    var result = ""
    for scalar in String(kept).decomposedStringWithCanonicalMapping.unicodeScalars
        where scalar.properties.generalCategory != .nonspacingMark {
        result += scalar.properties.lowercaseMapping
    }
    return result
}

func isCJK(_ v: UInt32) -> Bool {
    (0x4E00...0x9FFF).contains(v) || (0x3400...0x4DBF).contains(v) || (0x20000...0x2A6DF).contains(v) ||
    (0x2A700...0x2B81F).contains(v) || (0x2B920...0x2CEAF).contains(v) || (0xF900...0xFAFF).contains(v) ||
    (0x2F800...0x2FA1F).contains(v)
}"""


def _prompt_note(manifest: Manifest) -> list[str]:
    name = manifest.default_prompt_name
    if not name:
        return []
    return [f"Put the model's prompt before every text, as sentence-transformers does: `{manifest.prompts[name]!r}`"
            " (the manifest's `prompts` lists the others).", ""]


def _mediapipe(manifest: Manifest) -> list[str]:
    file = manifest.file
    normalization = app_normalization(manifest)
    figures = manifest.parity.app_text if manifest.parity else None
    note = ""
    if figures:
        note = (f" Without it, MediaPipe's tokenizer gives other ids on accented, capitalised non-ASCII or invisible "
                f"characters (tokenizer test strings: min cosine {figures.raw.strings.min_cosine:.2f} raw, "
                f"{figures.normalized.strings.min_cosine:.4f} normalised).")
    lines = ["## On a phone: MediaPipe TextEmbedder (strings in, the tokenizer is inside)", "",
             f"`{file}` carries its vocabulary and tokenizer settings as TFLite metadata: the app passes a string. "
             "TextEmbedder neither pools nor normalises: both are inside the model"
             + (", so the vector is already unit length." if manifest.normalized else ".")]
    if normalization == NORMALIZATION:
        lines += ["", "**Normalise each text first** (`normalizeForModel` below): MediaPipe lowercases ASCII only and "
                      "keeps accents and control characters, while the model's tokenizer strips accents and lowercases "
                      f"all of Unicode.{note}", ""]
    lines += _prompt_note(manifest)
    lines += ["Android (Kotlin, `com.google.mediapipe:tasks-text`), the model in `src/main/assets`:", "", "```kotlin",
              "import com.google.mediapipe.tasks.text.textembedder.TextEmbedder", *KOTLIN_IMPORTS, "",
              f'val embedder = TextEmbedder.createFromFile(context, "{file}")',
              "val vector: FloatArray = embedder.embed(normalizeForModel(text))",
              "    .embeddingResult().embeddings()[0].floatEmbedding()", "", KOTLIN_NORMALIZE, "```", "",
              "iOS (Swift, CocoaPod `MediaPipeTasksText`), the model in the app bundle:", "", "```swift",
              "import Foundation", "import MediaPipeTasksText", "",
              f'let path = Bundle.main.path(forResource: "{file.removesuffix(".tflite")}", ofType: "tflite")!',
              "let embedder = try TextEmbedder(modelPath: path)",
              "let vector = try embedder.embed(text: normalizeForModel(text))",
              "    .embeddingResult.embeddings[0].floatEmbedding", "", SWIFT_NORMALIZE, "```"]
    return lines


def _litert(manifest: Manifest) -> list[str]:
    first = manifest.shapes[0].name if manifest.shapes else "b1_s32"
    inputs = ", ".join(f'"{i.name}" to arrayOf({i.name.split("_")[0]})' for i in manifest.inputs)
    return ["## On a phone: LiteRT Interpreter (the app tokenizes)", "",
            f"Tokenize with `{manifest.tokenizer.file}` (on Android DJL's `ai.djl.huggingface:tokenizers`, "
            "on iOS swift-transformers' `Tokenizers`), pick the smallest signature whose length fits, pad on the right "
            f"with id {manifest.tokenizer.pad_token_id} and mask 0, and feed int32 ids. The MediaPipe artifact "
            "beside this one needs no tokenizer code.", ""] + _prompt_note(manifest) + [
            "Android (Kotlin, `com.google.ai.edge.litert:litert`):", "", "```kotlin",
            "import org.tensorflow.lite.Interpreter", "import org.tensorflow.lite.support.common.FileUtil", "",
            f'val interpreter = Interpreter(FileUtil.loadMappedFile(context, "{manifest.file}"))',
            "// input, attention, token: IntArray of the signature's length (ids, mask, type ids), padded",
            f"val inputs = mapOf<String, Any>({inputs})",
            f'val outputs = mapOf<String, Any>("{manifest.output.name}" to Array(1) '
            f'{{ FloatArray({manifest.embedding_dim}) }})',
            f'interpreter.runSignature(inputs, outputs, "{first}")', "```"]


def _coreml(manifest: Manifest) -> list[str]:
    return ["## On an iPhone: Core ML (the app tokenizes)", "",
            f"Tokenize with `{manifest.tokenizer.file}` (swift-transformers' "
            "`AutoTokenizer.from(modelFolder:)`), pad on the right to the smallest enumerated length that fits "
            "(mask 0 on padding).", ""]\
        + _prompt_note(manifest) + [
            "```swift", "import CoreML", "",
            'let model = try MLModel(contentsOf: Bundle.main.url(forResource: "model", withExtension: "mlmodelc")!)',
            "let ids = try MLMultiArray(shape: [1, length as NSNumber], dataType: .int32)  // and the mask likewise",
            "let out = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: "
            "[\"input_ids\": ids, \"attention_mask\": mask]))",
            f'let vector = out.featureValue(for: "{manifest.output.name}")!.multiArrayValue!', "```"]


TEXT_IN_FORMATS = ("mediapipe",)  # formats whose runtime tokenizes inside
APP_SNIPPETS = {"mediapipe": _mediapipe, "tflite": _litert, "coreml": _coreml}


def app_snippets(manifest: Manifest) -> list[str]:
    """The model card's section on loading and calling the artifact in an app; empty for server formats."""
    snippet = APP_SNIPPETS.get(manifest.format)
    return ["", *snippet(manifest)] if snippet else []
