"""The fixed texts int8 activation ranges are calibrated on (`vectune.embed.int8`).

Written for vectune: generic English in the shapes retrieval sees (short questions, claims,
one-paragraph passages, and long passages made by joining two of them, so that the ranges
cover every position up to 256 tokens and beyond), on everyday, technical, scientific and
medical subjects, with numbers, units, abbreviations and parentheses. Drawn from no
benchmark, so a model's variant never saw the data it is scored on. Changing a single
character changes `CALIBRATION_HASH`, which is part of the int8 variant's identity (cache
keys, collection stamps): edit it only on purpose.
"""

from __future__ import annotations

import hashlib

QUESTIONS = (
    "how long should bread dough rise before baking",
    "what causes the seasons on earth",
    "symptoms of iron deficiency in adults",
    "does caffeine affect sleep quality",
    "best way to store fresh herbs",
    "why do leaves change colour in autumn",
    "how is blood pressure measured",
    "what is the difference between a virus and a bacterium",
    "how do solar panels convert sunlight into electricity",
    "can regular exercise lower the risk of type 2 diabetes",
    "when was the printing press invented",
    "how to replace a bicycle inner tube",
    "what does a high white blood cell count mean",
    "effect of temperature on enzyme activity",
    "how do vaccines train the immune system",
    "what is inflation and why does it happen",
    "which proteins regulate the cell cycle",
    "how much water should a person drink per day",
    "is vitamin D synthesis reduced in winter",
    "role of gut bacteria in digestion",
    "how does a hash table handle collisions",
    "what is the boiling point of water at high altitude",
    "mutations in tumour suppressor genes and cancer risk",
    "how do antibiotics stop an infection",
)

CLAIMS = (
    "Daily walking of 30 minutes reduces resting heart rate in older adults.",
    "Antibiotic resistance spreads between bacteria through plasmids.",
    "Children who sleep less than eight hours score lower on memory tests.",
    "Low-dose aspirin does not prevent a first heart attack in healthy people.",
    "The enzyme telomerase is active in most human cancer cells.",
    "Urban trees lower summer street temperatures by several degrees.",
    "Smoking during pregnancy increases the risk of low birth weight.",
    "Insulin resistance precedes the diagnosis of type 2 diabetes by years.",
    "Microplastics have been found in drinking water on every continent.",
    "A diet rich in fibre is associated with lower colorectal cancer incidence.",
    "Mitochondrial DNA is inherited from the mother in humans.",
    "Rising CO2 concentrations acidify the surface ocean.",
    "Patients treated with statins have lower LDL cholesterol after 12 weeks.",
    "Noise exposure at night raises blood pressure in shift workers.",
    "The protein p53 halts the cell cycle after DNA damage.",
    "Most cases of cervical cancer are caused by human papillomavirus (HPV).",
)

PASSAGES = (
    "Bread rises because yeast ferments the sugars in flour and releases carbon dioxide. The gas is "
    "trapped by a network of gluten proteins, which stretch as the dough expands. A warm kitchen speeds "
    "the process up; a cold one slows it down, which some bakers prefer because a slow rise develops "
    "more flavour. Most recipes suggest letting the dough double in size, usually one to two hours at "
    "room temperature.",
    "The seasons are caused by the tilt of the Earth's axis, about 23.4 degrees relative to its orbit. "
    "When the northern hemisphere leans towards the Sun, sunlight strikes it more directly and days are "
    "longer, so it receives more energy and has summer. Six months later the situation is reversed. The "
    "distance between the Earth and the Sun changes only slightly during the year and is not the cause.",
    "Iron deficiency is the most common nutritional deficiency worldwide. Early on it may cause no "
    "symptoms at all; as stores fall, people report tiredness, shortness of breath on exertion, pale "
    "skin, brittle nails and headaches. Blood tests measure haemoglobin and ferritin, a protein that "
    "reflects the body's iron stores. Treatment usually combines oral iron supplements with a search "
    "for the cause, such as blood loss or poor absorption.",
    "Solar panels are made of cells of crystalline silicon that has been doped to form a p-n junction. "
    "When a photon with enough energy is absorbed, it frees an electron, and the electric field at the "
    "junction pushes electrons and holes in opposite directions, producing a direct current. An "
    "inverter converts this into alternating current for the grid. Typical commercial modules convert "
    "between 18% and 23% of incoming sunlight into electricity.",
    "A hash table stores key-value pairs in an array of buckets. A hash function maps each key to an "
    "index; when two keys map to the same index, a collision occurs. Separate chaining keeps a short "
    "list in each bucket, while open addressing probes other slots until it finds a free one. Good "
    "performance depends on a hash function that spreads keys evenly and on resizing the array before "
    "it becomes too full.",
    "Vaccines expose the immune system to a harmless version or part of a pathogen, such as an "
    "inactivated virus, a weakened strain, a protein subunit or messenger RNA that instructs cells to "
    "make one viral protein. B cells learn to produce antibodies that recognise it, and memory cells "
    "persist for months or years. If the real pathogen appears later, the response is faster and "
    "stronger, which often prevents disease or makes it milder.",
    "Inflation is a general rise in prices across an economy, which reduces the purchasing power of "
    "money. It can be driven by demand that outpaces supply, by rising costs of energy and wages, or by "
    "expectations that prices will keep climbing. Central banks usually respond by raising interest "
    "rates, which makes borrowing more expensive and cools spending. Most aim for an annual rate of "
    "about 2%.",
    "Enzymes are proteins that speed up chemical reactions by lowering their activation energy. Their "
    "activity rises with temperature up to an optimum, often near 37 degrees Celsius for human enzymes, "
    "because molecules collide more often. Above the optimum the enzyme's three-dimensional structure "
    "begins to unfold, the active site loses its shape, and activity falls sharply. Changes in pH can "
    "denature enzymes in a similar way.",
    "The cell cycle is controlled by cyclins and cyclin-dependent kinases (CDKs). Cyclin levels rise and "
    "fall during each phase, activating the kinases that phosphorylate target proteins and move the "
    "cell from G1 into S phase and from G2 into mitosis. Checkpoints monitor DNA integrity and spindle "
    "attachment; proteins such as p53 and Rb can pause the cycle when damage is detected, giving the "
    "cell time to repair it or to undergo apoptosis.",
    "Antibiotics work by targeting structures or processes that bacteria have and human cells lack. "
    "Penicillins block the enzymes that build the bacterial cell wall, tetracyclines and macrolides bind "
    "the bacterial ribosome and stop protein synthesis, and fluoroquinolones interfere with DNA gyrase. "
    "They have no effect on viruses. Overuse selects for resistant strains, which is why doctors are "
    "advised to prescribe them only when a bacterial infection is likely.",
    "In a randomised controlled trial of 412 adults aged 60 to 75 years, participants assigned to a "
    "supervised walking programme (three sessions per week for 24 weeks) showed a mean reduction in "
    "systolic blood pressure of 6.1 mmHg (95% CI 4.2 to 8.0) compared with 1.3 mmHg in the control "
    "group. Adherence was 81%. No serious adverse events were reported. These findings support "
    "moderate aerobic exercise as an adjunct to pharmacological treatment of hypertension.",
    "We measured the expression of 1,200 genes in liver samples from mice fed a high-fat diet for 16 "
    "weeks and from littermates fed standard chow. Genes involved in lipid synthesis were up-regulated "
    "about twofold, whereas genes of fatty acid oxidation were unchanged. Knockout of the transcription "
    "factor SREBP-1c abolished most of these changes and reduced hepatic triglyceride content by 45% "
    "(P < 0.01), suggesting a central role for this pathway in diet-induced fatty liver.",
    "Background: Vitamin D deficiency is common in northern latitudes during winter, when ultraviolet B "
    "radiation is too weak for synthesis in the skin. Methods: Serum 25-hydroxyvitamin D was measured in "
    "2,315 healthy volunteers in February and again in August. Results: Median concentrations were 38 "
    "nmol/L in winter and 71 nmol/L in summer; 42% of participants were deficient in winter. "
    "Conclusions: Seasonal supplementation may be warranted for most of the population.",
    "The human gut contains trillions of microorganisms, mostly bacteria, that ferment dietary fibre "
    "into short-chain fatty acids such as butyrate, acetate and propionate. These molecules nourish the "
    "cells lining the colon, help maintain the intestinal barrier and influence immune responses. "
    "Antibiotics, diet and illness can change the composition of this community, and several studies "
    "have linked such changes with inflammatory bowel disease, obesity and allergies.",
    "Tumour suppressor genes encode proteins that restrain cell division or trigger cell death when "
    "something goes wrong. Because most cells carry two copies, both usually have to be inactivated "
    "before control is lost, the so-called two-hit hypothesis first proposed for retinoblastoma. People "
    "who inherit one faulty copy, for example of BRCA1 or BRCA2, need only one further mutation, which "
    "explains their higher lifetime risk of breast and ovarian cancer.",
    "To replace a bicycle inner tube, shift to the smallest sprocket, open the brake and remove the "
    "wheel. Use tyre levers to lift one side of the tyre over the rim, pull out the old tube and run "
    "your fingers carefully around the inside of the tyre to find any thorn or glass. Insert the valve "
    "of the new tube first, inflate it slightly so it holds its shape, tuck it in, then push the tyre "
    "bead back over the rim with your thumbs.",
    "The printing press with movable metal type was developed by Johannes Gutenberg in Mainz around "
    "1440. By combining an oil-based ink, a screw press adapted from wine making and a hand mould for "
    "casting letters, it made the mass production of books practical. Within fifty years presses were "
    "operating in more than two hundred European cities, and millions of volumes had been printed, "
    "which transformed education, religion and science.",
    "Water boils when its vapour pressure equals the pressure of the surrounding air. At sea level this "
    "happens at 100 degrees Celsius, but atmospheric pressure falls with altitude, so at 3,000 metres "
    "water boils at about 90 degrees. Food cooked in boiling water therefore takes longer in the "
    "mountains, and pressure cookers, which raise the pressure inside the pot, are popular there.",
    "Fresh herbs last longest when treated according to their type. Soft herbs such as parsley, "
    "coriander and basil do well standing in a glass of water like cut flowers, loosely covered with a "
    "bag; basil prefers room temperature, the others the refrigerator. Woody herbs such as rosemary and "
    "thyme keep better wrapped in a slightly damp paper towel inside a container in the fridge.",
    "Leaves are green because they contain chlorophyll, which absorbs red and blue light for "
    "photosynthesis. In autumn, shorter days and cooler nights signal deciduous trees to stop producing "
    "chlorophyll. As it breaks down, yellow and orange carotenoids that were present all along become "
    "visible, and in some species new red pigments called anthocyanins are made from sugars trapped in "
    "the leaf.",
    "Blood pressure is recorded as two numbers: systolic pressure, when the heart contracts, over "
    "diastolic pressure, when it relaxes between beats, both in millimetres of mercury. A cuff around "
    "the upper arm is inflated until it stops blood flow and then slowly released while a sensor or "
    "stethoscope detects the return of flow. A reading of 120/80 mmHg is considered normal; repeated "
    "readings of 140/90 or higher indicate hypertension.",
    "Plasmids are small circular DNA molecules that replicate independently of the bacterial "
    "chromosome. Many carry genes for antibiotic resistance, and conjugation allows them to pass from "
    "one bacterium to another, even between different species. This horizontal gene transfer explains "
    "why resistance to a new drug can appear in unrelated pathogens within a few years of its "
    "introduction.",
    "A cohort of 8,946 children was followed from age 6 to age 12. Those who slept less than eight "
    "hours on school nights had lower scores on tests of working memory and attention, after adjustment "
    "for household income, screen time and physical activity (adjusted difference -0.21 standard "
    "deviations). The association was stronger in boys. Because the study was observational, it cannot "
    "establish that short sleep causes the deficits.",
    "Machine learning models are trained by minimising a loss function over examples. In supervised "
    "learning each example has a label, and gradient descent adjusts the model's parameters a little at "
    "a time in the direction that reduces the error. Overfitting occurs when a model memorises the "
    "training data instead of learning patterns that generalise; it is detected by evaluating on data "
    "held out from training and reduced by regularisation or more data.",
    "The committee met on Tuesday to review the proposed budget for the coming year. Members agreed to "
    "increase spending on road maintenance by 4% and to postpone the renovation of the library until "
    "further funds are available. A public consultation will open next month, and residents may submit "
    "comments online or at the town hall. The final vote is scheduled for early March.",
    "Sea levels are rising because warming water expands and because glaciers and ice sheets are "
    "melting. Satellite measurements show an average rise of about 3.7 millimetres per year over the "
    "past two decades, faster than during most of the twentieth century. Low-lying coastal cities face "
    "more frequent flooding, and many are investing in sea walls, wetland restoration and improved "
    "drainage.",
    "Our results indicate that the recombinant protein binds the receptor with high affinity (Kd = 2.3 "
    "nM) and inhibits downstream signalling in a dose-dependent manner. In xenograft models, weekly "
    "intravenous administration at 10 mg/kg reduced tumour volume by 58% relative to vehicle after 28 "
    "days, without significant weight loss. Further studies are needed to assess pharmacokinetics and "
    "potential immunogenicity in primates.",
    "The library's new opening hours start on Monday: 9 a.m. to 8 p.m. on weekdays and 10 a.m. to 4 "
    "p.m. on Saturdays. Members can now borrow up to fifteen items at a time, renew them online, and "
    "reserve study rooms for up to three hours. Children's story time continues every Wednesday "
    "morning, and a series of free workshops on digital skills begins in the autumn.",
    "Stem cells can divide for long periods and give rise to specialised cell types. Embryonic stem "
    "cells are pluripotent, able to form any tissue of the body, whereas adult stem cells in bone "
    "marrow, skin or the gut usually produce only the cells of their own tissue. In 2006 researchers "
    "showed that adult skin cells could be reprogrammed into induced pluripotent stem cells by adding "
    "four transcription factors.",
    "Photosynthesis takes place in chloroplasts and has two stages. In the light-dependent reactions, "
    "energy from sunlight splits water molecules, releasing oxygen and producing ATP and NADPH. In the "
    "Calvin cycle, the enzyme RuBisCO fixes carbon dioxide into organic molecules using that chemical "
    "energy, eventually forming glucose. Nearly all food chains on land depend on this process.",
    "Chronic kidney disease is defined by a reduced glomerular filtration rate (below 60 mL/min/1.73 "
    "m2) or by markers of kidney damage, such as albumin in the urine, lasting more than three months. "
    "Diabetes and high blood pressure are its most common causes. Early stages are usually silent, so "
    "screening of people at risk is recommended; treatment focuses on controlling blood pressure and "
    "blood sugar and on avoiding drugs that harm the kidneys.",
    "The Roman aqueducts carried water over distances of up to ninety kilometres using only gravity. "
    "Engineers surveyed routes with a gentle, constant slope, sometimes less than one metre per "
    "kilometre, and built tunnels, bridges and siphons where the terrain required. At its peak, the "
    "system supplying Rome delivered roughly a million cubic metres of water a day to public "
    "fountains, baths and private houses.",
)


def calibration_texts() -> list[str]:
    """The calibration sample, in a fixed order: the questions, the claims, the passages, every
    other passage joined with the next, and every fourth with the next two (long texts, up to
    and past 256 tokens: the ranges of late positions)."""
    n = len(PASSAGES)
    pairs = [f"{PASSAGES[i]} {PASSAGES[(i + 1) % n]}" for i in range(0, n, 2)]
    triples = [f"{PASSAGES[i]} {PASSAGES[(i + 1) % n]} {PASSAGES[(i + 2) % n]}" for i in range(1, n, 4)]
    return [*QUESTIONS, *CLAIMS, *PASSAGES, *pairs, *triples]


def _digest() -> str:
    h = hashlib.sha256()
    for text in calibration_texts():
        h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()[:12]


#: the calibration sample's content hash: part of the int8 variant's identity
CALIBRATION_HASH = _digest()
